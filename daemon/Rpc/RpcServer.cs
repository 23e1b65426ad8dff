using System.Collections.Concurrent;
using System.Globalization;
using System.Net.Sockets;
using DirBackup.Errors;
using DirBackup.Native;
using DirBackup.Protocol;
using Microsoft.Extensions.Logging;

namespace DirBackup.Rpc;

/// <summary>
/// The Unix socket listener: root-only socket (0600 in a 0700 directory), SO_PEERCRED checked on every
/// accept, one <see cref="Connection"/> per client, and a clean stop that removes the socket it created.
/// </summary>
public sealed class RpcServer
{
    private readonly ServerSettings _settings;
    private readonly MethodTable _methods;
    private readonly Catalog _catalog;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<Task, byte> _connections = new();

    public RpcServer(ServerSettings settings, MethodTable methods, Catalog catalog, ILoggerFactory loggers)
    {
        _settings = settings;
        _methods = methods;
        _catalog = catalog;
        _logger = loggers.CreateLogger("dirbackupd");
    }

    public async Task RunAsync(CancellationToken stopping)
    {
        var (listener, ownedPath) = Listen();
        try
        {
            using (stopping.Register(listener.Dispose))
            {
                await AcceptLoopAsync(listener, stopping).ConfigureAwait(false);
            }
        }
        finally
        {
            listener.Dispose();
            if (ownedPath is not null)
            {
                File.Delete(ownedPath);
            }
            await Task.WhenAll(_connections.Keys).WaitAsync(_settings.ShutdownGrace, CancellationToken.None)
                .ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
            RpcLog.Stopped(_logger);
        }
    }

    private async Task AcceptLoopAsync(Socket listener, CancellationToken stopping)
    {
        while (!stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(stopping).ConfigureAwait(false);
            }
            catch (Exception e) when (stopping.IsCancellationRequested && e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }
            catch (SocketException e)
            {
                RpcLog.AcceptFailed(_logger, e.Message);
                await Task.Delay(100, stopping).ConfigureAwait(false);
                continue;
            }
            var task = Task.Run(() => ServeAsync(client, stopping), CancellationToken.None);
            _connections.TryAdd(task, 0);
            _ = task.ContinueWith(t => _connections.TryRemove(t, out _), TaskScheduler.Default);
        }
    }

    private async Task ServeAsync(Socket client, CancellationToken stopping)
    {
        PeerCredentials peer;
        try
        {
            peer = PeerCredentials.Of(client);
        }
        catch (SocketException e)
        {
            RpcLog.AcceptFailed(_logger, $"no peer credentials: {e.Message}");
            client.Dispose();
            return;
        }
        var connection = new Connection(client, peer, _methods, _catalog, _logger);
        if (peer.Uid != 0)
        {
            RpcLog.PeerRefused(_logger, peer.Uid, peer.Pid);
            connection.TrySendError(ErrorCode.PeerNotAllowed, $"dirbackupd accepts connections from root only, not uid {peer.Uid}");
            connection.CloseSocket();
            return;
        }
        try
        {
            await connection.RunAsync(stopping).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            RpcLog.ConnectionDropped(_logger, peer.Pid, e.Message);
            connection.CloseSocket();
        }
    }

    private (Socket Listener, string? OwnedPath) Listen()
    {
        if (_settings.AllowSocketActivation && TakeActivatedSocket() is Socket activated)
        {
            RpcLog.ListeningActivated(_logger, _catalog.ProtocolVersion);
            return (activated, null);
        }
        var path = _settings.SocketPath;
        PrepareDirectory(path);
        RemoveStaleSocket(path);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        // The socket file is created by bind with the process umask: make it 0600 from its first moment.
        uint previous = Libc.umask(Convert.ToUInt32("177", 8));
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new DirBackupException(ErrorCode.IoError, $"cannot listen on {path}: {e.Message}");
        }
        finally
        {
            Libc.umask(previous);
        }
        socket.Listen(128);
        RpcLog.Listening(_logger, path, _catalog.ProtocolVersion);
        return (socket, path);
    }

    /// <summary>systemd socket activation: LISTEN_PID names us and LISTEN_FDS counts descriptors from 3.</summary>
    private static Socket? TakeActivatedSocket()
    {
        var pid = Environment.GetEnvironmentVariable("LISTEN_PID");
        var fds = Environment.GetEnvironmentVariable("LISTEN_FDS");
        if (pid is null || fds is null || pid != Environment.ProcessId.ToString(CultureInfo.InvariantCulture) || fds == "0")
        {
            return null;
        }
        Environment.SetEnvironmentVariable("LISTEN_PID", null);
        Environment.SetEnvironmentVariable("LISTEN_FDS", null);
        Environment.SetEnvironmentVariable("LISTEN_FDNAMES", null);
        return new Socket(new SafeSocketHandle(3, ownsHandle: true));
    }

    private static void PrepareDirectory(string socketPath)
    {
        var dir = Path.GetDirectoryName(socketPath) ?? "/";
        if (!Directory.Exists(dir))
        {
            Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        else if (socketPath == ServerSettings.DefaultSocketPath)
        {
            File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
    }

    /// <summary>A socket file left by a crash is removed; one with a live daemon behind it is not taken over.</summary>
    private static void RemoveStaleSocket(string path)
    {
        if (!File.Exists(path))
        {
            return;
        }
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException)
        {
            File.Delete(path);
            return;
        }
        throw new DirBackupException(ErrorCode.IoError, $"another dirbackupd already listens on {path}");
    }
}
