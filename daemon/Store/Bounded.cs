using DirBackup.Errors;

namespace DirBackup.Store;

/// <summary>
/// Runs a filesystem probe on its own thread and stops waiting after a limit: a stat on a dead NFS server
/// blocks in the kernel, and PVE's pvestatd must get an answer anyway. A probe that never returns keeps
/// its thread; that is the price of answering.
/// </summary>
public static class Bounded
{
    public static async Task<T> RunAsync<T>(Func<T> probe, TimeSpan limit, string what, CancellationToken cancellationToken)
    {
        var task = Task.Factory.StartNew(probe, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        try
        {
            return await task.WaitAsync(limit, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw DirBackupException.StorageUnavailable($"{what} did not answer within {limit.TotalSeconds:0.#} s");
        }
    }
}
