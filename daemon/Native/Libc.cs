using System.Runtime.InteropServices;

namespace DirBackup.Native;

/// <summary>The few libc calls .NET does not wrap: statvfs, fsync of a directory, open-file-description locks, umask, socket buffer sizes, memory advice, extent cloning.</summary>
internal static unsafe partial class Libc
{
    private const string Lib = "libc";

    [StructLayout(LayoutKind.Sequential)]
    public struct StatVfs
    {
        public ulong f_bsize;
        public ulong f_frsize;
        public ulong f_blocks;
        public ulong f_bfree;
        public ulong f_bavail;
        public ulong f_files;
        public ulong f_ffree;
        public ulong f_favail;
        public ulong f_fsid;
        public ulong f_flag;
        public ulong f_namemax;
        public fixed int f_spare[6];

        /// <summary>Bytes an unprivileged writer may still use.</summary>
        public readonly long AvailableBytes => (long)f_bavail * (long)f_frsize;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Flock
    {
        public short l_type;
        public short l_whence;
        public long l_start;
        public long l_len;
        public int l_pid;
    }

    public const int O_RDONLY = 0;
    public const int O_DIRECTORY = 0x10000;
    public const int O_CLOEXEC = 0x80000;
    public const int F_OFD_GETLK = 36;
    public const int F_OFD_SETLK = 37;
    public const int MADV_HUGEPAGE = 14;
    public const short F_RDLCK = 0;
    public const short F_WRLCK = 1;
    public const short F_UNLCK = 2;
    public const ulong ST_RDONLY = 1;
    public const int EAGAIN = 11;
    public const int EACCES = 13;
    public const int EINTR = 4;

    /// <summary>A call returned -1 because a signal arrived first: make it again.</summary>
    public static bool Interrupted(nint result) => result < 0 && Marshal.GetLastPInvokeError() == EINTR;

    public const int SOL_SOCKET = 1;
    public const int SO_SNDBUF = 7;
    public const int SO_SNDBUFFORCE = 32;

    [LibraryImport(Lib, EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int setsockopt(int fd, int level, int name, int* value, uint length);

    [LibraryImport(Lib, EntryPoint = "getsockopt", SetLastError = true)]
    public static partial int getsockopt(int fd, int level, int name, int* value, uint* length);

    [LibraryImport(Lib, EntryPoint = "statvfs", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int statvfs(string path, out StatVfs buf);

    [LibraryImport(Lib, EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int open(string path, int flags);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport(Lib, EntryPoint = "fsync", SetLastError = true)]
    public static partial int fsync(int fd);

    [LibraryImport(Lib, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int fcntl_lock(int fd, int cmd, ref Flock lk);

    [LibraryImport(Lib, EntryPoint = "madvise", SetLastError = true)]
    public static partial int madvise(nint address, nuint length, int advice);

    [LibraryImport(Lib, EntryPoint = "kill", SetLastError = true)]
    public static partial int kill(int pid, int signal);

    [LibraryImport(Lib, EntryPoint = "lstat", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int lstat(string path, byte* buf);

    /// <summary>lstat's file type bits (S_IFMT); .NET reports a socket only as "not a regular file".</summary>
    public static int FileType(string path)
    {
        byte* buf = stackalloc byte[256];
        return lstat(path, buf) != 0 ? -1 : TypeBits(buf);
    }

    // x86_64 struct stat: st_mode follows st_dev, st_ino and st_nlink (8 bytes each).
    private static int TypeBits(byte* stat) => *(int*)(stat + 24) & 0xF000;

    public const int O_RDWR = 2;
    public const int O_NOFOLLOW = 0x20000;
    public const ulong MS_RDONLY = 1;
    public const ulong MS_NOSUID = 2;
    public const ulong MS_NODEV = 4;
    public const ulong MS_NOEXEC = 8;
    public const int MNT_DETACH = 2;

    [LibraryImport(Lib, EntryPoint = "mount", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int mount(string? source, string target, string? fsType, ulong flags, string? data);

    [LibraryImport(Lib, EntryPoint = "umount2", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int umount2(string target, int flags);

    /// <summary>Unmounts <paramref name="target"/>, or detaches it while a reader still holds it (it goes when they let go).</summary>
    public static void UnmountOrDetach(string target)
    {
        if (umount2(target, 0) != 0)
        {
            umount2(target, MNT_DETACH);
        }
    }

    [LibraryImport(Lib, EntryPoint = "read", SetLastError = true)]
    public static partial nint read(int fd, void* buf, nuint count);

    [LibraryImport(Lib, EntryPoint = "write", SetLastError = true)]
    public static partial nint write(int fd, void* buf, nuint count);

    [LibraryImport(Lib, EntryPoint = "pread", SetLastError = true)]
    public static partial nint pread(int fd, void* buf, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "pwrite", SetLastError = true)]
    public static partial nint pwrite(int fd, void* buf, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "fstat", SetLastError = true)]
    private static partial int fstat(int fd, byte* buf);

    /// <summary>An open file's type bits (S_IFMT), or -1.</summary>
    public static int FileType(int fd)
    {
        byte* buf = stackalloc byte[256];
        return fstat(fd, buf) != 0 ? -1 : TypeBits(buf);
    }

    public const uint SPLICE_F_MOVE = 1;
    public const uint SPLICE_F_NONBLOCK = 2;
    public const int O_NONBLOCK = 0x800;

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [LibraryImport(Lib, EntryPoint = "pipe2", SetLastError = true)]
    public static partial int pipe2(int* fds, int flags);

    [LibraryImport(Lib, EntryPoint = "splice", SetLastError = true)]
    public static partial nint splice(int fdIn, long* offIn, int fdOut, long* offOut, nuint length, uint flags);

    [LibraryImport(Lib, EntryPoint = "vmsplice", SetLastError = true)]
    public static partial nint vmsplice(int fd, IoVec* iov, nuint count, uint flags);

    public const int FIONREAD = 0x541B;

    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int ioctl_int(int fd, ulong request, int* value);

    public const int S_IFSOCK = 0xC000;
    public const int S_IFREG = 0x8000;
    public const int S_IFLNK = 0xA000;

    public const int F_SETPIPE_SZ = 1031;

    [LibraryImport(Lib, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int fcntl_int(int fd, int cmd, int arg);

    public const int O_TMPFILE = 0x410000;
    public const int AT_FDCWD = -100;
    public const int AT_EMPTY_PATH = 0x1000;
    public const ulong MS_REMOUNT = 32;
    public const ulong MS_BIND = 4096;
    public const ulong FICLONERANGE = 0x4020940d;

    [StructLayout(LayoutKind.Sequential)]
    public struct FileCloneRange
    {
        public long SourceFd;
        public ulong SourceOffset;
        public ulong Length;
        public ulong DestinationOffset;
    }

    [LibraryImport(Lib, EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int open(string path, int flags, uint mode);

    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int ioctl_clone_range(int fd, ulong request, FileCloneRange* range);

    [LibraryImport(Lib, EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int ftruncate(int fd, long length);

    [LibraryImport(Lib, EntryPoint = "linkat", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int linkat(int oldDirFd, string oldPath, int newDirFd, string newPath, int flags);

    [LibraryImport(Lib, EntryPoint = "umask")]
    public static partial uint umask(uint mask);

    public static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno);

    /// <summary>fsync a directory so a rename or unlink in it survives a crash.</summary>
    public static void FsyncDirectory(string path) => Fsync(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, "directory");

    /// <summary>fsync a file another process wrote (qemu-img, a QEMU target), before it is renamed into place.</summary>
    public static void FsyncFile(string path) => Fsync(path, O_RDONLY | O_CLOEXEC, "file");

    private static void Fsync(string path, int flags, string what)
    {
        int fd = open(path, flags);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot open {what} '{path}' to sync it: {Describe(errno)}");
        }
        try
        {
            if (fsync(fd) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new IOException($"cannot sync {what} '{path}': {Describe(errno)}");
            }
        }
        finally
        {
            close(fd);
        }
    }
}
