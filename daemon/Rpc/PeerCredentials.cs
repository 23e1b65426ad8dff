using System.Buffers.Binary;
using System.Net.Sockets;

namespace DirBackup.Rpc;

/// <summary>The connecting process as the kernel saw it at connect time (SO_PEERCRED), in the daemon's namespaces.</summary>
public readonly record struct PeerCredentials(int Pid, int Uid, int Gid)
{
    private const int SolSocket = 1;
    private const int SoPeerCred = 17;

    public static PeerCredentials Of(Socket socket)
    {
        Span<byte> ucred = stackalloc byte[12];
        int length = socket.GetRawSocketOption(SolSocket, SoPeerCred, ucred);
        if (length < 12)
        {
            throw new SocketException((int)SocketError.ProtocolNotSupported);
        }
        return new PeerCredentials(
            BinaryPrimitives.ReadInt32LittleEndian(ucred),
            BinaryPrimitives.ReadInt32LittleEndian(ucred[4..]),
            BinaryPrimitives.ReadInt32LittleEndian(ucred[8..]));
    }
}
