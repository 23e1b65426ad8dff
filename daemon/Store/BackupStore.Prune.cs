using DirBackup.Errors;

namespace DirBackup.Store;

public sealed partial class BackupStore
{
    /// <summary>
    /// Applies retention to every backup group (or the one given). A backup the rules remove that newer backups
    /// are layered on is merged into them; only a base of a backup in progress stays, and the log says so. Removal
    /// goes oldest first, so each merge carries one backup's changes, not the sum of everything removed after it.
    /// Deletions an earlier run left half done (a merge interrupted by a crash) are finished first.
    /// </summary>
    public async Task<List<PruneEntry>> PruneAsync(IReadOnlyDictionary<string, long> keep, int? vmid, GuestType? type,
        bool dryRun, Func<string, string, Task> log, CancellationToken cancellationToken)
    {
        var failed = 0;
        async Task RemoveAsync(VolumeName volume, string what)
        {
            await log("info", $"{what} '{volume.VolId(config.StoreId)}'").ConfigureAwait(false);
            try
            {
                await DeleteAsync(volume, cancellationToken, message => log("info", message)).ConfigureAwait(false);
            }
            catch (DirBackupException e) when (e.Code == ErrorCode.NotFound && !Directory.Exists(BackupDir(volume)))
            {
                // Another prune or delete, on this node or another sharing the storage, got there first.
                await log("info", $"backup '{volume.VolId(config.StoreId)}' was already removed").ConfigureAwait(false);
            }
            catch (DirBackupException e)
            {
                failed++;
                await log("err", $"error when removing backup '{volume.VolId(config.StoreId)}' - {e.Message}").ConfigureAwait(false);
            }
        }
        if (!dryRun)
        {
            foreach (var interrupted in ListBackups(vmid, includeMerging: true).Where(b => b.Manifest.Merging && (type is null || b.Volume.Type == type)))
            {
                await RemoveAsync(interrupted.Volume, "finishing the interrupted removal of backup").ConfigureAwait(false);
            }
        }
        var entries = ListBackups(vmid).Where(b => type is null || b.Volume.Type == type).ToList();
        var results = new List<PruneEntry>();
        foreach (var group in entries.GroupBy(b => (b.Volume.VmId, b.Volume.Type)))
        {
            if (!dryRun)
            {
                await ClearLeftoverStagingAsync(group.Key.VmId, cancellationToken).ConfigureAwait(false);
            }
            var marks = group.Select(b => new PruneEntry(b.Volume, b.Manifest.Protected)).ToList();
            PruneMarks.Mark(marks, keep, TimeZoneInfo.Local);
            foreach (var kept in KeepBasesOfBackupsInProgress(group.ToList(), marks))
            {
                await log("info", $"keeping backup '{kept.VolId(config.StoreId)}': a backup in progress is based on it").ConfigureAwait(false);
            }
            results.AddRange(marks);
        }
        if (dryRun)
        {
            return results;
        }
        foreach (var entry in results.Where(r => r.Mark == "remove").OrderBy(r => r.CTime))
        {
            await RemoveAsync(entry.Volume, "removing backup").ConfigureAwait(false);
        }
        if (failed > 0)
        {
            throw DirBackupException.Io("error pruning backups - check log");
        }
        return results;
    }

    /// <summary>A backup in progress has its parents' images open as backing files: they stay, and so do their parents.</summary>
    private List<VolumeName> KeepBasesOfBackupsInProgress(List<BackupEntry> group, List<PruneEntry> marks)
    {
        var kept = new List<VolumeName>();
        var byDir = new Dictionary<string, (BackupEntry Backup, PruneEntry Mark)>(StringComparer.Ordinal);
        for (int i = 0; i < group.Count; i++)
        {
            byDir[group[i].Volume.BackupDirName] = (group[i], marks[i]);
        }
        var staying = new Queue<IEnumerable<string>>();
        staying.Enqueue(InProgressParents(group[0].Volume.VmId));
        while (staying.Count > 0)
        {
            foreach (var parent in staying.Dequeue())
            {
                if (byDir.TryGetValue(parent, out var p) && p.Mark.Mark == "remove")
                {
                    p.Mark.Mark = "keep";
                    kept.Add(p.Backup.Volume);
                    staying.Enqueue(p.Backup.Manifest.Parents);
                }
            }
        }
        return kept;
    }

    private IEnumerable<string> InProgressParents(int vmid) => StagedManifests(vmid).SelectMany(staged => staged.Manifest.Parents);
}
