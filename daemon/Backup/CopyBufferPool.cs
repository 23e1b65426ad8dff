using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using DirBackup.Native;

namespace DirBackup.Backup;

/// <summary>
/// One work unit's memory: <see cref="CopyPlan.ChunkSize"/> bytes of a pinned array, starting on a huge-page boundary
/// and advised to be backed by transparent huge pages, so the socket copies in and out of it walk two pages, not 1024
/// (on a VM each page walk is nested). The array is a huge page longer than the window; the slack is never touched.
/// </summary>
public sealed class CopyBuffer
{
    public const int HugePage = 2 << 20;

    private readonly byte[] _array = GC.AllocateUninitializedArray<byte>(CopyPlan.ChunkSize + HugePage, pinned: true);
    private readonly int _start;

    public CopyBuffer()
    {
        nint address = Marshal.UnsafeAddrOfPinnedArrayElement(_array, 0);
        _start = (int)((HugePage - (address % HugePage)) % HugePage);
        // Advice only: a kernel without transparent huge pages refuses it and the buffer works as before.
        _ = Libc.madvise(address + _start, CopyPlan.ChunkSize, Libc.MADV_HUGEPAGE);
    }

    public int Length => CopyPlan.ChunkSize;

    public Memory<byte> Memory => _array.AsMemory(_start, CopyPlan.ChunkSize);

    public Span<byte> Span => _array.AsSpan(_start, CopyPlan.ChunkSize);
}

/// <summary>
/// The copy engine's unit buffers, kept from one disk's copy to the next. Fresh ones cost page faults and cleared
/// pages the first time the socket writes into them: on 4 KiB pages, about 6,100 faults in every other incremental of
/// the benchmark disk (the GC handed them back to the kernel in between), a tenth of the daemon's CPU for that backup.
/// A pool idle for <see cref="IdleRelease"/> is let go, so a daemon between nightly jobs does not hold them.
/// </summary>
public sealed class CopyBufferPool
{
    public static CopyBufferPool Shared { get; } = new(TimeProvider.System);

    /// <summary>Two disks copied at once; buffers beyond that are left to the GC.</summary>
    public const int MaxKept = 16;

    public static readonly TimeSpan IdleRelease = TimeSpan.FromMinutes(5);

    private readonly ConcurrentBag<CopyBuffer> _free = [];
    private readonly TimeProvider _time;
    private readonly Lock _timerLock = new();
    private ITimer? _timer;
    private long _lastUse;

    public CopyBufferPool(TimeProvider time)
    {
        _time = time;
        _lastUse = time.GetTimestamp();
    }

    public int Count => _free.Count;

    /// <summary>A pinned buffer of <see cref="CopyPlan.ChunkSize"/> bytes: libnbd reads into it while requests are in flight.</summary>
    public CopyBuffer Rent()
    {
        Volatile.Write(ref _lastUse, _time.GetTimestamp());
        return _free.TryTake(out var buffer) ? buffer : new CopyBuffer();
    }

    /// <summary>Only buffers no request can still write into: after a failed copy they are left to the GC instead.</summary>
    public void Return(CopyBuffer buffer)
    {
        Volatile.Write(ref _lastUse, _time.GetTimestamp());
        if (_free.Count < MaxKept)
        {
            _free.Add(buffer);
            EnsureTimer();
        }
    }

    /// <summary>Lets the buffers go when nothing was rented or returned for <see cref="IdleRelease"/>.</summary>
    public void ReleaseIfIdle()
    {
        if (_time.GetElapsedTime(Volatile.Read(ref _lastUse)) < IdleRelease)
        {
            return;
        }
        while (_free.TryTake(out _))
        {
        }
        lock (_timerLock)
        {
            _timer?.Dispose();
            _timer = null;
        }
    }

    private void EnsureTimer()
    {
        lock (_timerLock)
        {
            _timer ??= _time.CreateTimer(_ => ReleaseIfIdle(), null, IdleRelease, IdleRelease);
        }
    }
}
