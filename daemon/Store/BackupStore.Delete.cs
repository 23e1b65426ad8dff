using DirBackup.Errors;
using DirBackup.Native;

namespace DirBackup.Store;

public sealed partial class BackupStore
{
    private const string DeletingPrefix = ".deleting-";

    /// <summary>
    /// Removes a backup. Protected backups, backups being restored and bases of backups in progress are refused;
    /// a base of committed backups is first merged into them. The directory then leaves the listing by one
    /// rename, so a crash mid-delete never shows a half-deleted backup.
    /// </summary>
    public async Task DeleteAsync(VolumeName volume, CancellationToken cancellationToken, Func<string, Task>? log = null)
    {
        string doomed;
        using (await LockGuestIfPresentAsync(volume, cancellationToken).ConfigureAwait(false))
        {
            var manifest = ReadManifest(volume, evenIfMerging: true);
            using var claim = InUse.BeginDelete(Root, volume);
            if (manifest.Protected)
            {
                throw new DirBackupException(ErrorCode.Protected, $"cannot remove protected backup '{volume}' on '{config.StoreId}': remove the protection first");
            }
            await ClearLeftoverStagingAsync(volume.VmId, cancellationToken).ConfigureAwait(false);
            var inProgress = BackupsInProgressOn(volume).ToList();
            if (inProgress.Count > 0)
            {
                throw new DirBackupException(ErrorCode.HasDependents,
                    $"cannot remove backup '{volume}': {string.Join(", ", inProgress)} {(inProgress.Count == 1 ? "is" : "are")} based on it; try again after the backup");
            }
            var dependents = DependentImages(volume);
            if (dependents.Count > 0)
            {
                await MergeIntoDependentsAsync(volume, manifest, dependents, claim, log, cancellationToken).ConfigureAwait(false);
            }
            cancellationToken.ThrowIfCancellationRequested();
            doomed = Path.Combine(GuestDir(volume.VmId), $"{DeletingPrefix}{volume.BackupDirName}-{Guid.NewGuid():N}");
            Directory.Move(BackupDir(volume), doomed);
            ManifestCache.Invalidate(GuestDir(volume.VmId));
            Libc.FsyncDirectory(GuestDir(volume.VmId));
        }
        RemoveTree(doomed);
        RemoveDeletionLeftovers(volume.VmId);
    }

    /// <summary>Backups being written whose provisional manifest names this one as a parent.</summary>
    private IEnumerable<string> BackupsInProgressOn(VolumeName volume) =>
        StagedManifests(volume.VmId)
            .Where(staged => staged.Manifest.Devices.Any(d => d.Parent == volume.BackupDirName))
            .Select(staged => $"the backup in progress {staged.Backup}");

    /// <summary>A crash between the rename and the removal leaves a hidden directory; the next delete in that guest finishes it.</summary>
    private void RemoveDeletionLeftovers(int vmid)
    {
        try
        {
            foreach (var dir in Directory.EnumerateDirectories(GuestDir(vmid), DeletingPrefix + "*"))
            {
                Directory.Delete(dir, recursive: true);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Another delete of this guest may be removing the same leftover right now; the next one retries.
        }
    }

    private static void RemoveTree(string path)
    {
        try
        {
            Directory.Delete(path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw DirBackupException.Io($"backup removed from the listing, but deleting its files failed: {e.Message}");
        }
    }
}
