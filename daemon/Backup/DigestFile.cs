using DirBackup.Errors;
using DirBackup.Native;
using Microsoft.Win32.SafeHandles;

namespace DirBackup.Backup;

/// <summary>
/// A disk's digest file, <c>&lt;device&gt;.digests</c>: the XXH128 of every <see cref="DiskCopier.DigestBlock"/> block
/// in disk order, 16 bytes each. A copy writes it a unit at a time as units finish, in any order, and reads its
/// parent's the same way: 1/4096 of a disk is 256 MiB for 1 TiB, too much to hold.
/// </summary>
public sealed class DigestFile : IDisposable
{
    private readonly SafeFileHandle _handle;
    private readonly string _path;

    private DigestFile(SafeFileHandle handle, string path, long diskSize)
    {
        _handle = handle;
        _path = path;
        Length = DiskCopier.BlockCount(diskSize) * DiskCopier.DigestSize;
    }

    /// <summary>The file's length once every block's digest is in.</summary>
    public long Length { get; }

    public static DigestFile Create(string path, long diskSize) =>
        new(File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite), path, diskSize);

    /// <summary>A parent backup's digests of a disk of <paramref name="diskSize"/> bytes, or null where it has none of that size.</summary>
    public static DigestFile? OpenParent(string path, long diskSize)
    {
        SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        }
        catch (IOException)
        {
            return null;
        }
        var file = new DigestFile(handle, path, diskSize);
        if (RandomAccess.GetLength(handle) != file.Length)
        {
            file.Dispose();
            return null;
        }
        return file;
    }

    private static long PositionOf(long diskOffset) => diskOffset / DiskCopier.DigestBlock * DiskCopier.DigestSize;

    /// <summary>Stores the digests of the blocks from <paramref name="diskOffset"/> on, a block boundary.</summary>
    public void Write(long diskOffset, ReadOnlySpan<byte> digests) => RandomAccess.Write(_handle, digests, PositionOf(diskOffset));

    /// <summary>Reads the digests of the blocks from <paramref name="diskOffset"/> on, a block boundary.</summary>
    public void Read(long diskOffset, Span<byte> digests)
    {
        long position = PositionOf(diskOffset);
        while (!digests.IsEmpty)
        {
            int read = RandomAccess.Read(_handle, digests, position);
            if (read == 0)
            {
                throw DirBackupException.Io($"{_path} ends at {position}, before the digests of its disk do");
            }
            digests = digests[read..];
            position += read;
        }
    }

    /// <summary>Checks every block's digest went in and puts the file on disk.</summary>
    public void Complete()
    {
        long length = RandomAccess.GetLength(_handle);
        if (length != Length)
        {
            throw DirBackupException.Io($"{_path} holds {length} bytes of digests instead of {Length}");
        }
        Libc.FsyncFile(_path);
    }

    public void Dispose() => _handle.Dispose();
}
