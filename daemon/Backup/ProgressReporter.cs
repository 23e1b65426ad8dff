using System.Diagnostics;

namespace DirBackup.Backup;

/// <summary>
/// Progress lines for the task log in the shape qemu-server prints for its own backups:
/// <c>  3% (120.0 MiB of 4.0 GiB) in 5s, read: 24.0 MiB/s, write: 20.1 MiB/s</c>.
/// </summary>
public sealed class ProgressReporter(CopyStats stats, Func<string, Task> log, TimeSpan interval) : IAsyncDisposable
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly CancellationTokenSource _stop = new();
    private Task? _loop;

    public TimeSpan Elapsed => _clock.Elapsed;

    public void Start() => _loop = Task.Run(LoopAsync);

    private async Task LoopAsync()
    {
        using var timer = new PeriodicTimer(interval);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                await log(Line()).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    public string Line()
    {
        double seconds = Math.Max(_clock.Elapsed.TotalSeconds, 0.001);
        long done = Interlocked.Read(ref stats.Done);
        return $"{Units.Percent(done, stats.ToTransfer),3}% ({Units.Bytes(done)} of {Units.Bytes(stats.ToTransfer)}) in {(int)seconds}s, "
            + $"read: {Units.Bytes(Interlocked.Read(ref stats.Read) / seconds)}/s, write: {Units.Bytes(Interlocked.Read(ref stats.Written) / seconds)}/s";
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        if (_loop is not null)
        {
            await _loop.ConfigureAwait(false);
        }
        _stop.Dispose();
    }
}
