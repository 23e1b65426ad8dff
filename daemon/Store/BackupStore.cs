using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using DirBackup.Errors;
using DirBackup.Native;

namespace DirBackup.Store;

/// <summary>
/// One storage directory: <c>&lt;path&gt;/&lt;vmid&gt;/&lt;type&gt;-&lt;epoch&gt;/manifest.json</c> per committed backup.
/// Names starting with a dot (staging, locks, deletions in progress) are never backups.
/// </summary>
public sealed partial class BackupStore(StorageConfig config, StoreSettings settings)
{
    private const string LockFileName = ".lock";

    public StorageConfig Config => config;
    public string Root => config.Path;

    public string GuestDir(int vmid) => Path.Combine(config.Path, vmid.ToString(CultureInfo.InvariantCulture));
    public string BackupDir(VolumeName volume) => Path.Combine(GuestDir(volume.VmId), volume.BackupDirName);

    /// <summary>Fails clearly, in bounded time, when the storage path is missing or not a directory.</summary>
    public Task EnsureAvailableAsync(CancellationToken cancellationToken) =>
        Bounded.RunAsync(CheckRootIsDirectory, settings.ActivationTimeout, $"storage path '{Root}'", cancellationToken);

    private bool CheckRootIsDirectory()
    {
        FileSystemInfo info = new DirectoryInfo(Root);
        if (!info.Exists)
        {
            if (File.Exists(Root))
            {
                throw DirBackupException.StorageUnavailable($"storage path '{Root}' is not a directory");
            }
            throw DirBackupException.StorageUnavailable($"storage path '{Root}' does not exist (is the backup filesystem mounted?)");
        }
        return true;
    }

    public async Task<StorageStatus> StatusAsync(CancellationToken cancellationToken)
    {
        return await Bounded.RunAsync(() =>
        {
            CheckRootIsDirectory();
            if (Libc.statvfs(Root, out var vfs) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw DirBackupException.StorageUnavailable($"cannot read usage of '{Root}': {Libc.Describe(errno)}");
            }
            long unit = (long)vfs.f_frsize;
            long total = (long)vfs.f_blocks * unit;
            long free = (long)vfs.f_bfree * unit;
            return new StorageStatus(total, vfs.AvailableBytes, total - free, true);
        }, settings.StatusTimeout, $"storage path '{Root}'", cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// The manifest of a committed backup, or not-found. A backup being merged away is not found either, unless
    /// the caller walks a chain (it is still a layer of the backups it is being merged into) or finishes the merge.
    /// </summary>
    public Manifest ReadManifest(VolumeName volume, bool evenIfMerging = false)
    {
        var file = Path.Combine(BackupDir(volume), Manifest.FileName);
        try
        {
            var manifest = Manifest.FromBytes(File.ReadAllBytes(file));
            if (manifest.Merging && !evenIfMerging)
            {
                throw DirBackupException.NotFound($"backup '{volume}' is being deleted (merged into the backups based on it); free it again to finish");
            }
            return manifest;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw DirBackupException.NotFound($"backup '{volume}' does not exist on storage '{config.StoreId}'");
        }
        catch (JsonException e)
        {
            throw DirBackupException.Io($"manifest of backup '{volume}' is damaged: {e.Message}");
        }
    }

    public void WriteManifest(VolumeName volume, Manifest manifest)
    {
        AtomicFile.Write(Path.Combine(BackupDir(volume), Manifest.FileName), manifest.ToBytes());
        ManifestCache.Invalidate(GuestDir(volume.VmId));
    }

    /// <summary>Held by a guest's backup from backup_init to its end: one backup of a guest at a time.</summary>
    public string BackupLockPath(int vmid) => Path.Combine(GuestDir(vmid), ".backup.lock");

    /// <summary>Staging directories of a guest; only call with the guest's backup lock held, so none of them is in use.</summary>
    public void RemoveLeftoverStaging(int vmid)
    {
        foreach (var dir in Directory.EnumerateDirectories(GuestDir(vmid), StagingPattern))
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>A backup being written lives in &lt;guest&gt;/.staging-&lt;backup dir&gt; until its commit renames it.</summary>
    public const string StagingPrefix = ".staging-";
    private const string StagingPattern = StagingPrefix + "*";

    /// <summary>A staging directory exists: a backup of the guest is in progress, or a crash left one behind.</summary>
    private bool HasStaging(int vmid) => Directory.EnumerateDirectories(GuestDir(vmid), StagingPattern).Any();

    /// <summary>The provisional manifests of a guest's backups in progress, by backup directory name; a staging directory without a readable one yet is skipped.</summary>
    private IEnumerable<(string Backup, Manifest Manifest)> StagedManifests(int vmid)
    {
        if (!Directory.Exists(GuestDir(vmid)))
        {
            yield break;
        }
        foreach (var dir in Directory.EnumerateDirectories(GuestDir(vmid), StagingPattern))
        {
            Manifest manifest;
            try
            {
                manifest = Manifest.FromBytes(File.ReadAllBytes(Path.Combine(dir, Manifest.FileName)));
            }
            catch (Exception e) when (e is IOException or JsonException)
            {
                continue;
            }
            yield return (Path.GetFileName(dir)[StagingPrefix.Length..], manifest);
        }
    }

    /// <summary>
    /// A crash leaves a staging directory behind until the guest's next backup. So that it never passes for a
    /// backup in progress, it goes as soon as the guest's backup lock shows that no backup runs. The lock is only
    /// tried, never waited for: a delete holds the guest lock meanwhile, and a backup takes the two the other way round.
    /// </summary>
    private async Task ClearLeftoverStagingAsync(int vmid, CancellationToken cancellationToken)
    {
        if (!HasStaging(vmid))
        {
            return;
        }
        FileLock idle;
        try
        {
            idle = await FileLock.AcquireAsync(BackupLockPath(vmid), $"backup of guest {vmid}", TimeSpan.Zero, cancellationToken).ConfigureAwait(false);
        }
        catch (DirBackupException e) when (e.Code == ErrorCode.Busy)
        {
            return;
        }
        using (idle)
        {
            RemoveLeftoverStaging(vmid);
        }
    }

    /// <summary>The per-guest lock for short changes: manifest edits, deletion, chain changes.</summary>
    public Task<FileLock> LockGuestAsync(int vmid, CancellationToken cancellationToken) =>
        FileLock.AcquireAsync(Path.Combine(GuestDir(vmid), LockFileName), $"guest {vmid} on storage '{config.StoreId}'", settings.LockWait, cancellationToken);

    /// <summary>Reads one of a backup's files by the name its manifest records; names are checked to stay inside the backup.</summary>
    public byte[]? ReadBackupFile(VolumeName volume, string? fileName)
    {
        if (fileName is null)
        {
            return null;
        }
        if (fileName.Length == 0 || fileName.Contains('/') || fileName.StartsWith('.'))
        {
            throw DirBackupException.Io($"manifest of backup '{volume}' names an invalid file '{fileName}'");
        }
        try
        {
            return File.ReadAllBytes(Path.Combine(BackupDir(volume), fileName));
        }
        catch (FileNotFoundException)
        {
            throw DirBackupException.Io($"backup '{volume}' lacks its file '{fileName}'");
        }
    }
}

public readonly record struct StorageStatus(long Total, long Avail, long Used, bool Active);
