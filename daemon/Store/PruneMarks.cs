using System.Globalization;

namespace DirBackup.Store;

/// <summary>A backup as retention sees it; <see cref="Mark"/> is keep, remove or protected.</summary>
public sealed class PruneEntry(VolumeName volume, bool isProtected)
{
    public VolumeName Volume { get; } = volume;
    public long CTime => Volume.BackupTime;
    public string? Mark { get; set; } = isProtected ? "protected" : null;
}

/// <summary>
/// PVE's retention rules (PVE-API.md 2.9), per backup group: newest first, keep-last, then one backup per hour,
/// day, ISO week, month and year in local time, each rule taking the newest unmarked backup of every bucket not
/// yet kept; protected backups are never counted; whatever is left is removed.
/// </summary>
public static class PruneMarks
{
    public static readonly string[] Options = ["keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly"];

    public static void Mark(IReadOnlyList<PruneEntry> group, IReadOnlyDictionary<string, long> keep, TimeZoneInfo zone)
    {
        bool keepAll = keep.TryGetValue("keep-all", out long all) && all > 0;
        if (keepAll || !Options.Any(o => keep.GetValueOrDefault(o) > 0))
        {
            foreach (var entry in group.Where(e => e.Mark is null or "remove"))
            {
                entry.Mark = "keep";
            }
            return;
        }
        var newestFirst = group.OrderByDescending(e => e.CTime).ToList();
        string Local(long ctime, string format) =>
            TimeZoneInfo.ConvertTime(DateTimeOffset.FromUnixTimeSeconds(ctime), zone).ToString(format, CultureInfo.InvariantCulture);
        MarkBuckets(newestFirst, keep.GetValueOrDefault("keep-last"), c => c.ToString(CultureInfo.InvariantCulture));
        MarkBuckets(newestFirst, keep.GetValueOrDefault("keep-hourly"), c => Local(c, "yyyy/MM/dd/HH"));
        MarkBuckets(newestFirst, keep.GetValueOrDefault("keep-daily"), c => Local(c, "yyyy/MM/dd"));
        MarkBuckets(newestFirst, keep.GetValueOrDefault("keep-weekly"), c =>
        {
            var local = TimeZoneInfo.ConvertTime(DateTimeOffset.FromUnixTimeSeconds(c), zone).DateTime;
            return $"{ISOWeek.GetYear(local)}/{ISOWeek.GetWeekOfYear(local):00}";
        });
        MarkBuckets(newestFirst, keep.GetValueOrDefault("keep-monthly"), c => Local(c, "yyyy/MM"));
        MarkBuckets(newestFirst, keep.GetValueOrDefault("keep-yearly"), c => Local(c, "yyyy"));
        foreach (var entry in newestFirst)
        {
            entry.Mark ??= "remove";
        }
    }

    private static void MarkBuckets(List<PruneEntry> newestFirst, long count, Func<long, string> bucket)
    {
        if (count <= 0)
        {
            return;
        }
        var covered = newestFirst.Where(e => e.Mark == "keep").Select(e => bucket(e.CTime)).ToHashSet(StringComparer.Ordinal);
        var added = new HashSet<string>(StringComparer.Ordinal);
        foreach (var entry in newestFirst)
        {
            var id = bucket(entry.CTime);
            if (entry.Mark is not null || covered.Contains(id))
            {
                continue;
            }
            if (added.Contains(id))
            {
                entry.Mark = "remove";
                continue;
            }
            if (added.Count >= count)
            {
                break;
            }
            added.Add(id);
            entry.Mark = "keep";
        }
    }
}
