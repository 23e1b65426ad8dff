using System.Diagnostics;
using DirBackup.Qemu;
using Microsoft.Extensions.Logging;

namespace DirBackup.Backup;

/// <summary>
/// Where one device's backup is written: its new qcow2 image in the staging directory (backed by the same device of
/// the parent backup for an incremental), served over NBD by a qemu-storage-daemon of its own.
/// </summary>
/// <remarks>
/// backup_vm_query_incremental starts one per device. qemu-server then sets up QEMU's backup access (fleecing,
/// fs-freeze, NBD exports) before it calls backup_vm, and the image creation and QEMU's start (about 15 ms per
/// device here) happen meanwhile instead of before the copy. backup_vm takes a target only if it wants exactly that
/// image: QEMU may still have turned an answered "use" into a full backup.
/// </remarks>
public sealed class BackupTarget
{
    private readonly CancellationTokenSource _abandoned = new();
    private readonly TaskCompletionSource<StorageDaemon> _served = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private BackupTarget(string stagingDir, string device, long size, string? parent)
    {
        Size = size;
        Parent = parent;
        Image = Path.Combine(stagingDir, VmDevice.ImageFileOf(device));
    }

    public long Size { get; }
    public string? Parent { get; }
    public string Image { get; }

    /// <summary>The target's NBD server, once the image exists and QEMU listens.</summary>
    public Task<StorageDaemon> Served => _served.Task;

    public TimeSpan CreateTime { get; private set; }
    public TimeSpan ServeTime { get; private set; }

    /// <summary>
    /// Creates the image and starts serving it, in the background; <paramref name="cancellationToken"/> abandons it. A
    /// failure is told to <paramref name="aheadLogger"/> for a target started ahead, which nobody awaits yet.
    /// </summary>
    public static BackupTarget Start(string stagingDir, string device, long size, string? parent, string runtimeDir, ILogger? aheadLogger,
        CancellationToken cancellationToken)
    {
        var target = new BackupTarget(stagingDir, device, size, parent);
        var registration = cancellationToken.UnsafeRegister(static s => ((CancellationTokenSource)s!).Cancel(), target._abandoned);
        _ = Task.Run(async () =>
        {
            try
            {
                target._served.SetResult(await target.CreateAndServeAsync(runtimeDir, target._abandoned.Token).ConfigureAwait(false));
            }
            catch (Exception e)
            {
                if (aheadLogger is not null && !target._abandoned.IsCancellationRequested)
                {
                    BackupLog.TargetAheadFailed(aheadLogger, device, target.Image, e.Message);
                }
                target._served.SetException(e);
            }
            finally
            {
                registration.Dispose();
            }
        }, CancellationToken.None);
        return target;
    }

    private async Task<StorageDaemon> CreateAndServeAsync(string runtimeDir, CancellationToken cancellationToken)
    {
        long started = Stopwatch.GetTimestamp();
        await QemuImg.CreateAsync(Image, Size, VmDevice.BackingFileOf(Parent, Path.GetFileName(Image)), cancellationToken).ConfigureAwait(false);
        CreateTime = Stopwatch.GetElapsedTime(started);
        var daemon = await StorageDaemon.ServeQcow2Async(Image, Size, runtimeDir, scatteredWrites: Parent is not null, cancellationToken).ConfigureAwait(false);
        ServeTime = Stopwatch.GetElapsedTime(started) - CreateTime;
        return daemon;
    }

    public bool IsFor(long size, string? parent) => Size == size && Parent == parent;

    /// <summary>
    /// A target nobody will copy into: its QEMU stopped, its image removed. Waits for a start still in progress, which
    /// the cancellation cuts short, so the staging directory can go right after.
    /// </summary>
    public void Discard()
    {
        _abandoned.Cancel();
        try
        {
            Served.Wait(TimeSpan.FromSeconds(35));
        }
        catch (AggregateException)
        {
        }
        if (Served.IsCompletedSuccessfully)
        {
            Served.Result.DisposeAsync().AsTask().Wait(TimeSpan.FromSeconds(35));
        }
        try
        {
            File.Delete(Image);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The staging directory goes anyway, this image with it.
        }
    }
}
