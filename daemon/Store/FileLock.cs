using System.Runtime.InteropServices;
using DirBackup.Errors;
using DirBackup.Native;

namespace DirBackup.Store;

/// <summary>
/// An exclusive lock on a file inside the storage. Open-file-description locks (F_OFD_SETLK) exclude other
/// threads of this process as well as other processes and, through NFS lockd, other nodes sharing the storage.
/// </summary>
public sealed class FileLock : IDisposable
{
    private readonly FileStream _file;

    private FileLock(FileStream file) => _file = file;

    public static async Task<FileLock> AcquireAsync(string path, string what, TimeSpan wait, CancellationToken cancellationToken)
    {
        var file = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        try
        {
            var deadline = DateTime.UtcNow + wait;
            var delay = TimeSpan.FromMilliseconds(10);
            while (!TryLock(file, path))
            {
                if (DateTime.UtcNow >= deadline)
                {
                    throw new DirBackupException(ErrorCode.Busy, $"{what} is busy (another operation holds its lock); try again later");
                }
                await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
                delay = TimeSpan.FromMilliseconds(Math.Min(delay.TotalMilliseconds * 2, 200));
            }
            return new FileLock(file);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static bool TryLock(FileStream file, string path) => TrySetRange(file, path, Libc.F_WRLCK, 0, 0);

    /// <summary>
    /// Takes, converts or gives back this open file description's lock on [start, start+length) (length 0: to the end
    /// of the file) without waiting; false when another description's lock is in the way.
    /// </summary>
    internal static bool TrySetRange(FileStream file, string path, short type, long start, long length)
    {
        var lk = new Libc.Flock { l_type = type, l_whence = 0, l_start = start, l_len = length };
        int fd = (int)file.SafeFileHandle.DangerousGetHandle();
        if (Libc.fcntl_lock(fd, Libc.F_OFD_SETLK, ref lk) == 0)
        {
            return true;
        }
        int errno = Marshal.GetLastPInvokeError();
        if (errno is Libc.EAGAIN or Libc.EACCES or Libc.EINTR)
        {
            return false;
        }
        throw DirBackupException.Io($"cannot lock '{path}': {Libc.Describe(errno)}");
    }

    // Closing the last descriptor of the open file description releases the lock.
    public void Dispose() => _file.Dispose();
}
