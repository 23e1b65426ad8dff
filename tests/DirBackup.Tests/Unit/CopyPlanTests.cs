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
        var plan = CopyPlan.Build(extents, 0, 2500, fromDirtyBitmap: true, Chunk);

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
        var plan = CopyPlan.Build(extents, 0, 3072, fromDirtyBitmap: false, Chunk);

        Assert.Equal([new Piece(0, 512, PieceKind.Copy), new Piece(512, 512, PieceKind.Zero)], plan[0].Pieces);
        Assert.True(plan[1].ZeroAll);
        Assert.True(plan[2].ZeroAll);
    }

    [Fact]
    public void A_map_with_a_gap_is_refused_rather_than_guessed()
    {
        var extents = new[] { new Extent(0, 100, 1), new Extent(200, 824, 1) };
        var e = Assert.Throws<DirBackupException>(() => CopyPlan.Build(extents, 0, 1024, fromDirtyBitmap: true, Chunk));
        Assert.Contains("leaves 100 uncovered", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_window_of_the_disk_is_planned_from_its_own_start_and_checked_to_its_own_end()
    {
        var extents = new[] { new Extent(2048, 600, 1), new Extent(2648, 952, 0) };
        var plan = CopyPlan.Build(extents, 2048, 3600, fromDirtyBitmap: true, Chunk);

        Assert.Equal([2048L, 3072L], plan.Select(c => c.Offset));
        Assert.Equal([new Piece(2048, 600, PieceKind.Copy), new Piece(2648, 424, PieceKind.Keep)], plan[0].Pieces);
        Assert.Equal(528, plan[1].Length);
        Assert.Throws<DirBackupException>(() => CopyPlan.Build(extents, 2048, 4096, fromDirtyBitmap: true, Chunk));
    }

    [Fact]
    public void A_map_that_stops_short_of_the_disk_end_is_refused()
    {
        Assert.Throws<DirBackupException>(() => CopyPlan.Build([new Extent(0, 1000, 0)], 0, 1024, fromDirtyBitmap: false, Chunk));
    }
}

public class WorkUnitTests
{
    private const int Chunk = 1024;
    private const int Block = 256;

    [Fact]
    public void Small_scattered_changes_of_many_chunks_travel_in_one_unit()
    {
        // One 256-byte dirty block in each of eight chunks: 2 KiB of data, one buffer.
        var extents = new List<DirBackup.Nbd.Extent>();
        for (long c = 0; c < 8; c++)
        {
            extents.Add(new(c * Chunk, Block, 1));
            extents.Add(new(c * Chunk + Block, Chunk - Block, 0));
        }
        var chunks = CopyPlan.Build(extents, 0, 8 * Chunk, fromDirtyBitmap: true, Chunk);
        var units = WorkUnits.Pack(chunks, hasBacking: true, parentDigests: true, Block, bufferSize: Chunk * 4);

        var unit = Assert.Single(units);
        Assert.Equal(8, unit.Chunks.Length);
        Assert.Equal(8 * Block, unit.PackedLength);
        Assert.All(unit.Segments, s => Assert.Equal(SegmentSource.Source, s.Source));
        Assert.Equal(Enumerable.Range(0, 8).Select(i => i * Block), unit.Segments.Select(s => s.PackedOffset));
    }

    [Fact]
    public void Units_never_need_more_than_the_buffer()
    {
        var chunks = CopyPlan.Build([new DirBackup.Nbd.Extent(0, 10 * Chunk, 0)], 0, 10 * Chunk, fromDirtyBitmap: false, Chunk);
        var units = WorkUnits.Pack(chunks, hasBacking: false, parentDigests: false, Block, bufferSize: 3 * Chunk);
        Assert.Equal([3, 3, 3, 1], units.Select(u => u.Chunks.Length));
        Assert.All(units, u => Assert.True(u.PackedLength <= 3 * Chunk));
    }

    [Fact]
    public void A_partly_changed_block_reads_its_kept_part_back_and_whole_kept_blocks_do_not()
    {
        // dirty [100, 300): blocks 0 and 1 are partly kept, blocks 2 and 3 are kept whole.
        var chunks = CopyPlan.Build([new(0, 100, 0), new(100, 200, 1), new(300, 724, 0)], 0, Chunk, fromDirtyBitmap: true, Chunk);
        var unit = Assert.Single(WorkUnits.Pack(chunks, hasBacking: true, parentDigests: true, Block, Chunk));
        Assert.Equal([
            new Segment(0, 100, SegmentSource.Target, 0),
            new Segment(100, 200, SegmentSource.Source, 100),
            new Segment(300, 212, SegmentSource.Target, 300)], unit.Segments);
    }

    [Fact]
    public void Without_parent_digests_every_kept_byte_of_a_changed_chunk_is_read_back()
    {
        var chunks = CopyPlan.Build([new(0, 100, 1), new(100, 924, 0)], 0, Chunk, fromDirtyBitmap: true, Chunk);
        var unit = Assert.Single(WorkUnits.Pack(chunks, hasBacking: true, parentDigests: false, Block, Chunk));
        Assert.Equal(Chunk, unit.PackedLength);
    }

    [Fact]
    public void A_unit_holds_a_bounded_number_of_chunks_even_when_they_need_no_memory()
    {
        var chunks = CopyPlan.Build([new(0, 10 * Chunk, DirBackup.Nbd.Extent.Hole | DirBackup.Nbd.Extent.Zero)], 0, 10 * Chunk, fromDirtyBitmap: false, Chunk);
        var units = WorkUnits.Pack(chunks, hasBacking: false, parentDigests: false, Block, Chunk, maxChunks: 4).ToList();
        Assert.Equal([4, 4, 2], units.Select(u => u.Chunks.Length));
        Assert.Equal([(0L, 4L * Chunk), (4L * Chunk, 8L * Chunk), (8L * Chunk, 10L * Chunk)], units.Select(u => (u.Start, u.End)));
    }

    [Fact]
    public void Zero_chunks_of_a_full_backup_need_no_memory_at_all()
    {
        var chunks = CopyPlan.Build([new(0, 4 * Chunk, DirBackup.Nbd.Extent.Hole | DirBackup.Nbd.Extent.Zero)], 0, 4 * Chunk, fromDirtyBitmap: false, Chunk);
        var unit = Assert.Single(WorkUnits.Pack(chunks, hasBacking: false, parentDigests: false, Block, Chunk));
        Assert.Empty(unit.Segments);
        Assert.Equal(4, unit.Chunks.Length);
    }
}
