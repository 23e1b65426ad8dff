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

    public string ExportDir => Path.Combine(runtimeDir, "restore");

    /// <summary>Squashfs mounts of container restores, beside the VM exports.</summary>
    public ContainerMounts Containers { get; } = new(Path.Combine(runtimeDir, "restore"));

    public void Begin(BackupStore store, VolumeName volume) => InUse.Acquire(store.Root, volume);

    public async Task<string> ExportAsync(BackupStore store, VolumeName volume, string device, ILogger logger, CancellationToken cancellationToken)
    {
        var key = (store.Root, volume, device);
        // A backup that is not there says so, before its guest's lock file is looked for.
        store.ReadManifest(volume);
        InUse.Acquire(store.Root, volume);
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
        var layers = await ChainBuilder.BuildAsync(store, volume, device, cancellationToken).ConfigureAwait(false);
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
    public async Task EndAsync(BackupStore store, VolumeName volume)
    {
        foreach (var key in _exports.Keys.Where(k => k.Root == store.Root && k.Volume == volume).ToList())
        {
            if (_exports.TryRemove(key, out var lazy))
            {
                await StopOneAsync(lazy).ConfigureAwait(false);
            }
        }
        InUse.ReleaseAll(store.Root, volume);
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
