namespace DirBackup.Backup;

/// <summary>
/// Keeps the average read rate at or under PVE's <c>bandwidth-limit</c> (bytes/s): each request reserves its
/// share of time on one shared schedule, so several workers together stay under the limit.
/// </summary>
public sealed class BandwidthLimiter(long bytesPerSecond, TimeProvider? time = null)
{
    private readonly TimeProvider _time = time ?? TimeProvider.System;
    private readonly Lock _lock = new();
    private long _nextTicks = long.MinValue;

    public long BytesPerSecond => bytesPerSecond;

    /// <summary>How long the caller must wait before it may transfer <paramref name="bytes"/>.</summary>
    public TimeSpan Reserve(long bytes)
    {
        lock (_lock)
        {
            long now = _time.GetUtcNow().UtcTicks;
            if (_nextTicks < now)
            {
                _nextTicks = now;
            }
            var wait = TimeSpan.FromTicks(_nextTicks - now);
            _nextTicks += (long)(bytes * (double)TimeSpan.TicksPerSecond / bytesPerSecond);
            return wait;
        }
    }

    public void Take(long bytes, CancellationToken cancellationToken)
    {
        var wait = Reserve(bytes);
        if (wait > TimeSpan.Zero)
        {
            cancellationToken.WaitHandle.WaitOne(wait);
            cancellationToken.ThrowIfCancellationRequested();
        }
    }
}
