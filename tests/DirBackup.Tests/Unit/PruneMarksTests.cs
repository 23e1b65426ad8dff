using DirBackup.Store;
using Xunit;

namespace DirBackup.Tests.Unit;

public class PruneMarksTests
{
    private static readonly DateTimeOffset Start = new(2026, 11, 2, 12, 0, 0, TimeSpan.Zero); // a Monday

    private static List<PruneEntry> Backups(params (int Hours, bool Protected)[] ages) =>
        ages.Select(a => new PruneEntry(new VolumeName(100, GuestType.Qemu, Start.AddHours(-a.Hours).ToUnixTimeSeconds()), a.Protected)).ToList();

    private static string Marks(List<PruneEntry> entries) => string.Join(",", entries.Select(e => e.Mark));

    private static Dictionary<string, long> Keep(params (string Option, long Count)[] options) => options.ToDictionary(o => o.Option, o => o.Count);

    [Fact]
    public void Keep_last_keeps_the_newest_and_removes_the_rest()
    {
        var group = Backups((0, false), (1, false), (2, false), (3, false));
        PruneMarks.Mark(group, Keep(("keep-last", 2)), TimeZoneInfo.Utc);
        Assert.Equal("keep,keep,remove,remove", Marks(group));
    }

    [Fact]
    public void Keep_daily_keeps_the_newest_of_each_day_and_counts_days()
    {
        // two on the same day, then one each on the two days before
        var group = Backups((0, false), (2, false), (24, false), (48, false));
        PruneMarks.Mark(group, Keep(("keep-daily", 2)), TimeZoneInfo.Utc);
        Assert.Equal("keep,remove,keep,remove", Marks(group));
    }

    [Fact]
    public void Protected_backups_stay_and_do_not_use_up_a_slot()
    {
        var group = Backups((0, true), (1, false), (2, false));
        PruneMarks.Mark(group, Keep(("keep-last", 1)), TimeZoneInfo.Utc);
        Assert.Equal("protected,keep,remove", Marks(group));
    }

    [Fact]
    public void Keep_all_or_no_positive_option_keeps_everything()
    {
        var group = Backups((0, false), (30, true), (60, false));
        PruneMarks.Mark(group, Keep(("keep-all", 1)), TimeZoneInfo.Utc);
        Assert.Equal("keep,protected,keep", Marks(group));
        var again = Backups((0, false), (60, false));
        PruneMarks.Mark(again, Keep(("keep-last", 0)), TimeZoneInfo.Utc);
        Assert.Equal("keep,keep", Marks(again));
    }

    [Fact]
    public void Weekly_buckets_are_iso_weeks_and_rules_combine()
    {
        // Monday noon, the Sunday before (other ISO week), and that Saturday (same week as Sunday).
        var group = Backups((0, false), (24, false), (48, false));
        PruneMarks.Mark(group, Keep(("keep-last", 1), ("keep-weekly", 2)), TimeZoneInfo.Utc);
        Assert.Equal("keep,keep,remove", Marks(group));
    }
}
