using DirBackup.Backup;
using DirBackup.Errors;
using DirBackup.Nbd;
using Xunit;

namespace DirBackup.Tests.Unit;

public class CopyPlanTests
{
    private const int Chunk = 1024;

    [Fact]
    public void A_dirty_bitmap_copies_dirty_runs_and_keeps_the_rest_per_chunk()
    {
        // dirty [0,100), clean [100,1500), dirty [1500,2048), clean to 2500
        var extents = new[] { new Extent(0, 100, 1), new Extent(100, 1400, 0), new Extent(1500, 548, 1), new Extent(2048, 452, 0) };
        var plan = CopyPlan.Build(extents, 2500, fromDirtyBitmap: true, Chunk);

        Assert.Equal(3, plan.Count);
        Assert.Equal([new Piece(0, 100, PieceKind.Copy), new Piece(100, 924, PieceKind.Keep)], plan[0].Pieces);
        Assert.Equal([new Piece(1024, 476, PieceKind.Keep), new Piece(1500, 548, PieceKind.Copy)], plan[1].Pieces);
        Assert.True(plan[2].KeepsAll);
        Assert.Equal(452, plan[2].Length);
        Assert.Equal(648, plan.Sum(c => c.Bytes(PieceKind.Copy)));
    }

    [Fact]
    public void Allocation_extents_read_data_and_skip_what_reads_as_zero()
    {
        var extents = new[] { new Extent(0, 512, 0), new Extent(512, 1536, Extent.Hole | Extent.Zero), new Extent(2048, 1024, Extent.Zero) };
        var plan = CopyPlan.Build(extents, 3072, fromDirtyBitmap: false, Chunk);

        Assert.Equal([new Piece(0, 512, PieceKind.Copy), new Piece(512, 512, PieceKind.Zero)], plan[0].Pieces);
        Assert.True(plan[1].ZeroAll);
        Assert.True(plan[2].ZeroAll);
    }

    [Fact]
    public void A_map_with_a_gap_is_refused_rather_than_guessed()
    {
        var extents = new[] { new Extent(0, 100, 1), new Extent(200, 824, 1) };
        var e = Assert.Throws<DirBackupException>(() => CopyPlan.Build(extents, 1024, fromDirtyBitmap: true, Chunk));
        Assert.Contains("leaves 100 uncovered", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_map_that_stops_short_of_the_disk_end_is_refused()
    {
        Assert.Throws<DirBackupException>(() => CopyPlan.Build([new Extent(0, 1000, 0)], 1024, fromDirtyBitmap: false, Chunk));
    }

    [Fact]
    public void Zero_runs_split_a_buffer_at_the_granularity()
    {
        var buffer = new byte[10];
        buffer[0] = 1;
        buffer[7] = 1;
        var runs = CopyPlan.ZeroRuns(buffer, 2).ToList();
        Assert.Equal([(0, 2, false), (2, 4, true), (6, 2, false), (8, 2, true)], runs);
        Assert.Equal([(0, 10, true)], CopyPlan.ZeroRuns(new byte[10], 4).ToList());
    }
}
