using DirBackup.Store;

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
    public string StagingDir => Path.Combine(store.GuestDir(volume.VmId), ".staging-" + volume.BackupDirName);
    public string FinalDir => store.BackupDir(volume);

    /// <summary>The backup is on disk under its final name; nothing may remove it on a later failure.</summary>
    public bool Committed { get; set; }
    public bool Running { get; set; }
    public bool Finished { get; private set; }

    /// <summary>Why backup_vm_query_incremental answered "new" for a device, told in the task log when it is copied.</summary>
    public Dictionary<string, string> WhyFull { get; } = new(StringComparer.Ordinal);

    /// <summary>The process that called backup_container_prepare: the container child must descend from it.</summary>
    public int? PreparedBy { get; set; }

    /// <summary>
    /// Everything synced, then one rename: from here on the backup exists even if vzdump fails later (QEMU may
    /// already have moved its bitmap on). The manifest's size counts every file of the backup.
    /// </summary>
    public void Commit(Manifest manifest)
    {
        var staging = StagingDir;
        var manifestPath = Path.Combine(staging, Manifest.FileName);
        File.Delete(manifestPath);
        manifest.Size = Directory.EnumerateFiles(staging).Sum(f => new FileInfo(f).Length);
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
        if (!Committed)
        {
            RemoveStaging();
        }
        backupLock.Dispose();
    }

    public void RemoveStaging()
    {
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
