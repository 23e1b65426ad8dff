using DirBackup.Store;
using Microsoft.Extensions.Logging;

namespace DirBackup.Backup;

/// <summary>
/// One guest's backup between backup_init and backup_handle_log_file. It holds the guest's backup lock, so a
/// second backup of the same guest is refused while it exists.
/// </summary>
public sealed class GuestBackup(BackupStore store, VolumeName volume, FileLock backupLock, object owner) : IDisposable
{
    public BackupStore Store => store;
    public VolumeName Volume => volume;
    public object Owner => owner;
    public string StagingDir => Path.Combine(store.GuestDir(volume.VmId), BackupStore.StagingPrefix + volume.BackupDirName);
    public string FinalDir => store.BackupDir(volume);

    /// <summary>The backup is on disk under its final name; nothing may remove it on a later failure.</summary>
    public bool Committed { get; set; }
    public bool Running { get; set; }
    public bool Finished { get; private set; }

    /// <summary>Why backup_vm_query_incremental answered "new" for a device, told in the task log when it is copied.</summary>
    public Dictionary<string, string> WhyFull { get; } = new(StringComparer.Ordinal);

    /// <summary>The process that called backup_container_prepare: the container child must descend from it.</summary>
    public int? PreparedBy { get; set; }

    private readonly Dictionary<string, BackupTarget> _targets = new(StringComparer.Ordinal);

    /// <summary>Starts a device's target ahead of backup_vm, after one started earlier for the device is gone.</summary>
    public void StartTarget(string device, long size, string? parent, string runtimeDir, ILogger logger, CancellationToken cancellationToken)
    {
        RemoveTarget(device)?.Discard();
        var target = BackupTarget.Start(StagingDir, device, size, parent, runtimeDir, logger, cancellationToken);
        lock (_targets)
        {
            _targets[device] = target;
        }
    }

    /// <summary>
    /// The target started ahead for this image, if it is the one wanted and did not fail (backup_vm then tries once
    /// more itself, and reports its own error); any other for the device goes.
    /// </summary>
    public BackupTarget? TakeTarget(string device, long size, string? parent)
    {
        var target = RemoveTarget(device);
        if (target is null || (target.IsFor(size, parent) && !target.Served.IsFaulted))
        {
            return target;
        }
        target.Discard();
        return null;
    }

    private BackupTarget? RemoveTarget(string device)
    {
        lock (_targets)
        {
            return _targets.Remove(device, out var target) ? target : null;
        }
    }

    /// <summary>Targets started ahead that backup_vm did not take: their QEMU stops, their images go.</summary>
    public void DiscardTargets()
    {
        List<BackupTarget> left;
        lock (_targets)
        {
            left = [.. _targets.Values];
            _targets.Clear();
        }
        foreach (var target in left)
        {
            target.Discard();
        }
    }

    /// <summary>
    /// Everything synced, then one rename: from here on the backup exists even if vzdump fails later (QEMU may
    /// already have moved its bitmap on). The manifest's size counts every file of the backup.
    /// </summary>
    public void Commit(Manifest manifest)
    {
        DiscardTargets();
        var staging = StagingDir;
        var manifestPath = Path.Combine(staging, Manifest.FileName);
        File.Delete(manifestPath);
        manifest.Size = BackupStore.OwnFilesSize(staging);
        AtomicFile.WriteNew(manifestPath, manifest.ToBytes());
        Native.Libc.FsyncDirectory(staging);
        Directory.Move(staging, FinalDir);
        Native.Libc.FsyncDirectory(store.GuestDir(volume.VmId));
        Committed = true;
        ManifestCache.Invalidate(store.GuestDir(volume.VmId));
    }

    /// <summary>Ends the backup: an uncommitted staging directory goes, the lock is released. Idempotent.</summary>
    public void Finish()
    {
        if (Finished)
        {
            return;
        }
        Finished = true;
        DiscardTargets();
        if (!Committed)
        {
            RemoveStaging();
        }
        backupLock.Dispose();
    }

    public void RemoveStaging()
    {
        // A target started ahead may still be creating its image in there.
        DiscardTargets();
        try
        {
            if (Directory.Exists(StagingDir))
            {
                Directory.Delete(StagingDir, recursive: true);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Removed again by the next backup_init of this guest.
        }
    }

    public void Dispose() => Finish();
}
