using System.Globalization;
using System.Runtime.InteropServices;
using DirBackup.Backup;
using Xunit;

namespace DirBackup.Tests.Unit;

public class CopyBufferPoolTests
{
    private sealed class ManualClock : TimeProvider
    {
        public long Ticks { get; set; }
        public override long GetTimestamp() => Ticks;
        public override long TimestampFrequency => TimeSpan.TicksPerSecond;
    }

    [Fact]
    public void A_returned_buffer_is_handed_out_again_instead_of_a_fresh_one()
    {
        var pool = new CopyBufferPool(new ManualClock());
        var first = pool.Rent();
        pool.Return(first);
        Assert.Same(first, pool.Rent());
        Assert.Equal(CopyPlan.ChunkSize, first.Length);
    }

    [Fact]
    public void No_more_than_the_cap_is_kept()
    {
        var pool = new CopyBufferPool(new ManualClock());
        var rented = Enumerable.Range(0, CopyBufferPool.MaxKept + 3).Select(_ => pool.Rent()).ToList();
        rented.ForEach(pool.Return);
        Assert.Equal(CopyBufferPool.MaxKept, pool.Count);
    }

    [Fact]
    public void Buffers_are_let_go_only_after_the_pool_was_idle_long_enough()
    {
        var clock = new ManualClock();
        var pool = new CopyBufferPool(clock);
        pool.Return(pool.Rent());
        clock.Ticks += (CopyBufferPool.IdleRelease - TimeSpan.FromSeconds(1)).Ticks;
        pool.ReleaseIfIdle();
        Assert.Equal(1, pool.Count);
        clock.Ticks += TimeSpan.FromSeconds(2).Ticks;
        pool.ReleaseIfIdle();
        Assert.Equal(0, pool.Count);
    }

    [Fact]
    public void A_buffer_starts_on_a_huge_page_and_is_backed_by_huge_pages_once_written()
    {
        var setting = File.ReadAllText("/sys/kernel/mm/transparent_hugepage/enabled").Trim();
        Assert.False(setting.Contains("[never]", StringComparison.Ordinal), $"this kernel has transparent huge pages off ({setting})");
        var buffer = new CopyBufferPool(new ManualClock()).Rent();
        buffer.Span.Fill(0x5a);
        Assert.True(MemoryMarshal.TryGetArray<byte>(buffer.Memory, out var window));
        long start = Marshal.UnsafeAddrOfPinnedArrayElement(window.Array!, window.Offset);
        Assert.Equal(0, start % CopyBuffer.HugePage);
        Assert.True(HugeKiBAt(start) >= CopyBuffer.HugePage / 1024, $"no huge page at 0x{start:x}");
    }

    /// <summary>The AnonHugePages figure of this process's mapping that holds <paramref name="address"/>.</summary>
    private static long HugeKiBAt(long address)
    {
        bool inside = false;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            var range = line.Split(' ')[0].Split('-');
            if (range.Length == 2 && long.TryParse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out long from)
                && long.TryParse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out long to))
            {
                inside = address >= from && address < to;
            }
            else if (inside && line.StartsWith("AnonHugePages:", StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
            }
        }
        return 0;
    }
}
