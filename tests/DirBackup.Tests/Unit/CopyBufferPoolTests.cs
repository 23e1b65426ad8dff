using System.Runtime.InteropServices;
using DirBackup.Backup;
using DirBackup.Tests.Infrastructure;
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
    public void A_buffer_starts_on_a_huge_page_and_all_of_it_is_advised_to_use_huge_pages()
    {
        var buffer = new CopyBufferPool(new ManualClock()).Rent();
        Assert.True(MemoryMarshal.TryGetArray<byte>(buffer.Memory, out var window));
        long start = Marshal.UnsafeAddrOfPinnedArrayElement(window.Array!, window.Offset);
        Assert.Equal(0, start % CopyBuffer.HugePage);
        var mapping = Smaps.Read().Single(m => m.Holds(start));
        Assert.True(mapping.HugePagesAdvised, $"the buffer at 0x{start:x} was not advised to use huge pages");
        Assert.True(mapping.Holds(start + buffer.Length - 1), "the advice does not cover the whole buffer");
    }
}
