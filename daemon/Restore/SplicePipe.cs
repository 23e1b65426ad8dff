using System.Runtime.InteropServices;
using DirBackup.Native;

namespace DirBackup.Restore;

/// <summary>
/// A pipe a FUSE reply is assembled in, so file pages reach the reader with one copy in the kernel. Sized for the
/// largest reply; pipes are root's to enlarge past fs.pipe-max-size.
/// </summary>
internal sealed unsafe class SplicePipe : IDisposable
{
    private const int WantedCapacity = 4 << 20;
    private const int ZeroLength = 1 << 20;

    // Never written after allocation, so lending its pages to many pipes at once is safe.
    private static readonly byte* s_zeroes = (byte*)NativeMemory.AlignedAlloc(ZeroLength, 4096);

    static SplicePipe() => NativeMemory.Clear(s_zeroes, ZeroLength);

    private int _read = -1;
    private int _write = -1;
    private int _capacity;

    public bool IsOpen => _write >= 0;

    public int Write => _write;

    /// <summary>
    /// What a pipe may hold here: 4 MiB, or fs.pipe-max-size (1 MiB by default) where the daemon lacks
    /// CAP_SYS_RESOURCE. Each page of a reply takes a slot, so a reply must stay well under it.
    /// </summary>
    public static int Capacity { get; } = ProbeCapacity();

    private static int ProbeCapacity()
    {
        using var probe = Create(WantedCapacity);
        return probe.IsOpen ? probe._capacity : 0;
    }

    /// <summary>
    /// A pipe of <see cref="Capacity"/>, or a closed one (the caller then copies). Non-blocking: a reply that does not
    /// fit fails instead of waiting for a reader that is this very thread.
    /// </summary>
    public static SplicePipe Create() => Create(Capacity);

    /// <summary>No pipe: the caller copies every reply.</summary>
    public static SplicePipe None() => new();

    private static SplicePipe Create(int capacity)
    {
        var pipe = new SplicePipe();
        int* fds = stackalloc int[2];
        if (capacity <= 0 || Libc.pipe2(fds, Libc.O_CLOEXEC | Libc.O_NONBLOCK) != 0)
        {
            return pipe;
        }
        pipe._read = fds[0];
        pipe._write = fds[1];
        pipe._capacity = Libc.fcntl_int(pipe._write, Libc.F_SETPIPE_SZ, capacity);
        if (pipe._capacity < 0)
        {
            pipe._capacity = Libc.fcntl_int(pipe._write, Libc.F_SETPIPE_SZ, Math.Min(capacity, 1 << 20));
        }
        if (pipe._capacity < 0)
        {
            pipe.Close();
        }
        return pipe;
    }

    public void Dispose() => Close();

    public bool AppendZeroes(int count)
    {
        while (count > 0)
        {
            var iov = new Libc.IoVec { Base = s_zeroes, Length = (nuint)Math.Min(count, ZeroLength) };
            nint n = Libc.vmsplice(_write, &iov, 1, Libc.SPLICE_F_NONBLOCK);
            if (n <= 0)
            {
                if (Libc.Interrupted(n))
                {
                    continue;
                }
                return false;
            }
            count -= (int)n;
        }
        return true;
    }

    public bool AppendFile(int fd, long offset, int count)
    {
        while (count > 0)
        {
            nint n = Libc.splice(fd, &offset, _write, null, (nuint)count, Libc.SPLICE_F_MOVE | Libc.SPLICE_F_NONBLOCK);
            if (n <= 0)
            {
                if (Libc.Interrupted(n))
                {
                    continue;
                }
                return false; // a read error, the file ends early, or the pipe is full
            }
            count -= (int)n;
        }
        return true;
    }

    /// <summary>Moves the whole reply to <paramref name="fd"/> in one splice, as /dev/fuse requires; 0 or the errno.</summary>
    public int SendTo(int fd, int length)
    {
        while (true)
        {
            nint n = Libc.splice(_read, null, fd, null, (nuint)length, Libc.SPLICE_F_MOVE);
            if (n == length)
            {
                return 0;
            }
            int errno = n < 0 ? Marshal.GetLastPInvokeError() : FuseAbi.EIO;
            if (errno != Libc.EINTR)
            {
                return errno;
            }
        }
    }

    /// <summary>Empties the pipe after a reply that could not be completed or sent.</summary>
    public void Drain(byte* scratch, int scratchLength)
    {
        int available = 0;
        while (Libc.ioctl_int(_read, Libc.FIONREAD, &available) == 0 && available > 0)
        {
            if (Libc.read(_read, scratch, (nuint)Math.Min(available, scratchLength)) <= 0)
            {
                break;
            }
        }
    }

    public void Close()
    {
        if (_read >= 0)
        {
            Libc.close(_read);
        }
        if (_write >= 0)
        {
            Libc.close(_write);
        }
        _read = _write = -1;
    }
}
