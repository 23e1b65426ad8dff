using DirBackup.Errors;

namespace DirBackup.Store;

public sealed partial class BackupStore
{
    /// <summary>
    /// Applies retention to every backup group (or the one given). A backup the rules would remove but that a
    /// kept backup (or a backup in progress) is layered on stays, since removing it would need chain merging,
    /// which this daemon does not do yet; the log says which and why. Removal goes newest first, so a chain of
    /// removable backups unwinds from its tip.
    /// </summary>
    public async Task<List<PruneEntry>> PruneAsync(IReadOnlyDictionary<string, long> keep, int? vmid, GuestType? type,
        bool dryRun, Func<string, string, Task> log, CancellationToken cancellationToken)
    {
        var entries = ListBackups(vmid).Where(b => type is null || b.Volume.Type == type).ToList();
        var results = new List<PruneEntry>();
        foreach (var group in entries.GroupBy(b => (b.Volume.VmId, b.Volume.Type)))
        {
            var marks = group.Select(b => new PruneEntry(b.Volume, b.Manifest.Protected)).ToList();
            PruneMarks.Mark(marks, keep, TimeZoneInfo.Local);
            foreach (var (kept, because) in KeepBasesOfKeptBackups(group.ToList(), marks))
            {
                await log("info", $"keeping backup '{kept.VolId(config.StoreId)}': {because} is based on it (merging chains is not implemented yet)").ConfigureAwait(false);
            }
            results.AddRange(marks);
        }
        if (dryRun)
        {
            return results;
        }
        var failed = 0;
        foreach (var entry in results.Where(r => r.Mark == "remove").OrderByDescending(r => r.CTime))
        {
            await log("info", $"removing backup '{entry.Volume.VolId(config.StoreId)}'").ConfigureAwait(false);
            try
            {
                await DeleteAsync(entry.Volume, cancellationToken).ConfigureAwait(false);
            }
            catch (DirBackupException e)
            {
                failed++;
                await log("err", $"error when removing backup '{entry.Volume.VolId(config.StoreId)}' - {e.Message}").ConfigureAwait(false);
            }
        }
        if (failed > 0)
        {
            throw DirBackupException.Io("error pruning backups - check log");
        }
        return results;
    }

    /// <summary>Every parent of a backup that stays (kept, protected or in progress) stays too; returns who keeps whom.</summary>
    private List<(VolumeName Kept, string Because)> KeepBasesOfKeptBackups(List<BackupEntry> group, List<PruneEntry> marks)
    {
        var kept = new List<(VolumeName, string)>();
        var byDir = new Dictionary<string, (BackupEntry Backup, PruneEntry Mark)>(StringComparer.Ordinal);
        for (int i = 0; i < group.Count; i++)
        {
            byDir[group[i].Volume.BackupDirName] = (group[i], marks[i]);
        }
        var staying = new Queue<(IEnumerable<string> Parents, string Name)>();
        for (int i = 0; i < group.Count; i++)
        {
            if (marks[i].Mark != "remove")
            {
                staying.Enqueue((group[i].Manifest.Parents, $"'{group[i].Volume.VolId(config.StoreId)}'"));
            }
        }
        staying.Enqueue((InProgressParents(group[0].Volume.VmId), "a backup in progress"));
        while (staying.Count > 0)
        {
            var (parents, name) = staying.Dequeue();
            foreach (var parent in parents)
            {
                if (byDir.TryGetValue(parent, out var p) && p.Mark.Mark == "remove")
                {
                    p.Mark.Mark = "keep";
                    kept.Add((p.Backup.Volume, name));
                    staying.Enqueue((p.Backup.Manifest.Parents, $"'{p.Backup.Volume.VolId(config.StoreId)}'"));
                }
            }
        }
        return kept;
    }

    private IEnumerable<string> InProgressParents(int vmid)
    {
        if (!Directory.Exists(GuestDir(vmid)))
        {
            return [];
        }
        var parents = new List<string>();
        foreach (var dir in Directory.EnumerateDirectories(GuestDir(vmid), ".staging-*"))
        {
            try
            {
                parents.AddRange(Manifest.FromBytes(File.ReadAllBytes(Path.Combine(dir, Manifest.FileName))).Parents);
            }
            catch (Exception e) when (e is IOException or System.Text.Json.JsonException)
            {
            }
        }
        return parents;
    }
}
