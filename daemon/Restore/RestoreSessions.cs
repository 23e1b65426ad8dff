using System.Collections.Concurrent;
using DirBackup.Store;
using Microsoft.Extensions.Logging;

namespace DirBackup.Restore;

/// <summary>
/// VM restores in progress, keyed by storage, volume name and device: PVE makes each restore call from a new
/// provider object, possibly in another process, so nothing lives in a connection.
/// </summary>
public sealed class RestoreSessions(string runtimeDir, bool spliceReads = true)
{
    private readonly ConcurrentDictionary<(string Root, VolumeName Volume, string Device), Lazy<Task<IChainExport>>> _exports = new();
    private readonly SemaphoreSlim _teardown = new(1, 1);
    private readonly RestoreCallers _callers = new();

    public string ExportDir => Path.Combine(runtimeDir, "restore");

    /// <summary>Squashfs mounts of container restores, beside the VM exports.</summary>
    private ContainerMounts Containers { get; } = new(Path.Combine(runtimeDir, "restore"));

    /// <summary>
    /// restore_vm_init, or the tar mechanism of a container restore: the backup is held until the cleanup (PVE reads a
    /// tar archive in place, and from another node of a shared storage a delete would pull it from under the reader).
    /// </summary>
    public void Begin(BackupStore store, VolumeName volume, int callerPid)
    {
        InUse.Acquire(store.Root, volume);
        _callers.Note(store.Root, volume, callerPid);
    }

    public async Task<string> ExportAsync(BackupStore store, VolumeName volume, string device, int callerPid, ILogger logger, CancellationToken cancellationToken)
    {
        var key = (store.Root, volume, device);
        // A backup that is not there says so, before its guest's lock file is looked for.
        store.ReadManifest(volume);
        InUse.Acquire(store.Root, volume);
        _callers.Note(store.Root, volume, callerPid);
        var lazy = _exports.GetOrAdd(key, _ => new Lazy<Task<IChainExport>>(() => StartAsync(store, volume, device, logger, cancellationToken)));
        try
        {
            return (await lazy.Value.ConfigureAwait(false)).Path;
        }
        catch
        {
            _exports.TryRemove(new KeyValuePair<(string, VolumeName, string), Lazy<Task<IChainExport>>>(key, lazy));
            throw;
        }
    }

    /// <summary>
    /// Where the storage's filesystem shares blocks between files, the chain becomes a plain file of shared blocks;
    /// elsewhere the daemon serves it over FUSE; only a chain with data QEMU alone can read (compressed clusters) goes
    /// through QEMU's slower export.
    /// </summary>
    private async Task<IChainExport> StartAsync(BackupStore store, VolumeName volume, string device, ILogger logger, CancellationToken cancellationToken)
    {
        var layers = ChainBuilder.Build(store, volume, device);
        var mountpoint = Path.Combine(ExportDir, $"{volume.VmId}-{volume.BackupDirName}-{device}-{Guid.NewGuid():N}.raw");
        using var chain = await ChainFiles.OpenAsync(layers, cancellationToken).ConfigureAwait(false);
        if (chain.Map is null)
        {
            return await QemuChainExport.StartAsync(layers, mountpoint, cancellationToken).ConfigureAwait(false);
        }
        if (ReflinkExport.TryStart(chain, store.GuestDir(volume.VmId), mountpoint, out var whyNot) is { } shared)
        {
            RestoreLog.SharedBlocks(logger, volume.ToString(), device, mountpoint);
            return shared;
        }
        RestoreLog.ServedOverFuse(logger, volume.ToString(), device, mountpoint, whyNot ?? "");
        return await ChainFileExport.StartAsync(chain, mountpoint, spliceReads, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Idempotent: a device never exported, or already torn down, is fine.</summary>
    public async Task StopAsync(BackupStore store, VolumeName volume, string device)
    {
        if (_exports.TryRemove((store.Root, volume, device), out var lazy))
        {
            await StopOneAsync(lazy).ConfigureAwait(false);
        }
    }

    /// <summary>restore_vm_cleanup: every export of the backup goes, and the backup may be deleted again.</summary>
    public async Task EndAsync(string root, VolumeName volume)
    {
        foreach (var key in _exports.Keys.Where(k => k.Root == root && k.Volume == volume).ToList())
        {
            if (_exports.TryRemove(key, out var lazy))
            {
                await StopOneAsync(lazy).ConfigureAwait(false);
            }
        }
        InUse.ReleaseAll(root, volume);
        _callers.Forget(root, volume);
    }

    /// <summary>The directory mechanism of a container restore: its squashfs image mounted, held until the cleanup.</summary>
    public async Task<string> MountContainerAsync(BackupStore store, VolumeName volume, string image, int callerPid, CancellationToken cancellationToken)
    {
        var directory = await Containers.MountAsync(store, volume, image, cancellationToken).ConfigureAwait(false);
        _callers.Note(store.Root, volume, callerPid);
        return directory;
    }

    /// <summary>restore_container_cleanup, of either mechanism; see <see cref="ContainerMounts.UnmountAsync"/>.</summary>
    public async Task EndContainerAsync(string root, VolumeName volume)
    {
        await Containers.UnmountAsync(root, volume).ConfigureAwait(false);
        _callers.Forget(root, volume);
    }

    /// <summary>
    /// Until <paramref name="stopping"/>: every <paramref name="period"/>, a restore whose task was killed before its
    /// cleanup (its callers have ended) is cleaned up as its cleanup call would have, so its backup can be deleted
    /// again without a restart of the daemon. A container's mount still in use is tried again the next time.
    /// </summary>
    public async Task EndAbandonedAsync(TimeSpan period, ILogger logger, CancellationToken stopping)
    {
        using var timer = new PeriodicTimer(period);
        try
        {
            while (await timer.WaitForNextTickAsync(stopping).ConfigureAwait(false))
            {
                foreach (var (root, volume, pids) in _callers.Abandoned(period))
                {
                    try
                    {
                        if (volume.Type == GuestType.Lxc)
                        {
                            await EndContainerAsync(root, volume).ConfigureAwait(false);
                        }
                        else
                        {
                            await EndAsync(root, volume).ConfigureAwait(false);
                        }
                        RestoreLog.Abandoned(logger, volume.ToString(), root, pids);
                    }
                    catch (Exception e) when (e is not OperationCanceledException)
                    {
                        // Whatever went wrong, the watch goes on for this restore and the others.
                        RestoreLog.AbandonedNotEnded(logger, volume.ToString(), root, e.Message);
                    }
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>On daemon stop: no FUSE mount outlives its server, no squashfs stays mounted.</summary>
    public async Task StopAllAsync()
    {
        await Containers.UnmountAllAsync().ConfigureAwait(false);
        foreach (var key in _exports.Keys.ToList())
        {
            if (_exports.TryRemove(key, out var lazy))
            {
                await StopOneAsync(lazy).ConfigureAwait(false);
            }
        }
    }

    private async Task StopOneAsync(Lazy<Task<IChainExport>> lazy)
    {
        IChainExport export;
        try
        {
            export = await lazy.Value.ConfigureAwait(false);
        }
        catch (Exception)
        {
            // An export that never started has nothing to tear down; its caller already got the error.
            return;
        }
        await _teardown.WaitAsync().ConfigureAwait(false);
        try
        {
            await export.StopAsync().ConfigureAwait(false);
        }
        finally
        {
            _teardown.Release();
        }
    }

    /// <summary>At start: restore exports and backup-target servers a crashed daemon left running.</summary>
    public async Task RemoveLeftoversAsync()
    {
        await QemuChainExport.RemoveLeftoversAsync(ExportDir).ConfigureAwait(false);
        await QemuChainExport.RemoveLeftoversAsync(runtimeDir, StorageDaemonSocketPattern).ConfigureAwait(false);
    }

    private const string StorageDaemonSocketPattern = "qsd-*.sock*";
}
