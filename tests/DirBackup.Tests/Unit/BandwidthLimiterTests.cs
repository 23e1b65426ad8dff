using DirBackup.Backup;
using Xunit;

namespace DirBackup.Tests.Unit;

public class BandwidthLimiterTests
{
    private sealed class ManualClock : TimeProvider
    {
        public DateTimeOffset Now { get; set; } = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
        public override DateTimeOffset GetUtcNow() => Now;
    }

    [Fact]
    public void The_first_request_goes_at_once_and_later_ones_wait_their_share()
    {
        var clock = new ManualClock();
        var limiter = new BandwidthLimiter(1_000_000, clock);
        Assert.Equal(TimeSpan.Zero, limiter.Reserve(500_000));
        Assert.Equal(TimeSpan.FromSeconds(0.5), limiter.Reserve(500_000));
        Assert.Equal(TimeSpan.FromSeconds(1), limiter.Reserve(1_000_000));
    }

    [Fact]
    public void Idle_time_is_not_saved_up_for_a_burst()
    {
        var clock = new ManualClock();
        var limiter = new BandwidthLimiter(1_000_000, clock);
        limiter.Reserve(1_000_000);
        clock.Now += TimeSpan.FromSeconds(10);
        Assert.Equal(TimeSpan.Zero, limiter.Reserve(1_000_000));
        Assert.Equal(TimeSpan.FromSeconds(1), limiter.Reserve(1));
    }

    [Fact]
    public void Over_a_long_run_the_average_rate_is_the_limit()
    {
        var clock = new ManualClock();
        var limiter = new BandwidthLimiter(4 << 20, clock);
        var start = clock.Now;
        for (int i = 0; i < 100; i++)
        {
            clock.Now += limiter.Reserve(1 << 20);
        }
        // 100 MiB at 4 MiB/s: the 100th request starts after 99 MiB worth of time.
        Assert.Equal(99.0 / 4, (clock.Now - start).TotalSeconds, 6);
    }
}
