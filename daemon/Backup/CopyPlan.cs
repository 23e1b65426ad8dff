using DirBackup.Errors;
using DirBackup.Nbd;

namespace DirBackup.Backup;

public enum PieceKind
{
    /// <summary>Read from the source and store.</summary>
    Copy,

    /// <summary>The source says it reads as zeroes: nothing to read.</summary>
    Zero,

    /// <summary>Not dirty: this backup keeps what its parent holds.</summary>
    Keep,
}

public readonly record struct Piece(long Offset, long Length, PieceKind Kind);

/// <summary>One fixed-size chunk of the disk and what to do with each part of it; the unit of work and of digests.</summary>
public sealed record ChunkWork(long Offset, long Length, Piece[] Pieces)
{
    public bool KeepsAll => Pieces.All(p => p.Kind == PieceKind.Keep);
    public bool ZeroAll => Pieces.All(p => p.Kind == PieceKind.Zero);
    public long Bytes(PieceKind kind)
    {
        long bytes = 0;
        foreach (var p in Pieces)
        {
            bytes += p.Kind == kind ? p.Length : 0;
        }
        return bytes;
    }
}

/// <summary>Turns a block-status map into per-chunk work, checking the map covers the disk (or the window of it) exactly.</summary>
public static class CopyPlan
{
    public const int ChunkSize = 4 << 20;

    /// <param name="start">Where the window of the disk starts: a multiple of <paramref name="chunkSize"/>.</param>
    /// <param name="fromDirtyBitmap">true: extents of qemu:dirty-bitmap (dirty = copy, clean = keep); false: base:allocation (zero = zero, else copy).</param>
    public static List<ChunkWork> Build(IReadOnlyList<Extent> extents, long start, long end, bool fromDirtyBitmap, int chunkSize = ChunkSize)
    {
        var chunks = new List<ChunkWork>((int)((end - start + chunkSize - 1) / chunkSize));
        var pieces = new List<Piece>();
        int e = 0;
        for (long chunkStart = start; chunkStart < end; chunkStart += chunkSize)
        {
            long chunkEnd = Math.Min(chunkStart + chunkSize, end);
            pieces.Clear();
            long position = chunkStart;
            while (position < chunkEnd)
            {
                while (e < extents.Count && extents[e].End <= position)
                {
                    e++;
                }
                if (e == extents.Count || extents[e].Offset > position)
                {
                    throw DirBackupException.Io($"the NBD server's block status leaves {position} uncovered");
                }
                var extent = extents[e];
                long pieceEnd = Math.Min(extent.End, chunkEnd);
                var kind = fromDirtyBitmap
                    ? ((extent.Flags & Extent.Dirty) != 0 ? PieceKind.Copy : PieceKind.Keep)
                    : ((extent.Flags & Extent.Zero) != 0 ? PieceKind.Zero : PieceKind.Copy);
                if (pieces.Count > 0 && pieces[^1].Kind == kind)
                {
                    pieces[^1] = pieces[^1] with { Length = pieces[^1].Length + (pieceEnd - position) };
                }
                else
                {
                    pieces.Add(new Piece(position, pieceEnd - position, kind));
                }
                position = pieceEnd;
            }
            chunks.Add(new ChunkWork(chunkStart, chunkEnd - chunkStart, [.. pieces]));
        }
        return chunks;
    }
}

public enum SegmentSource
{
    /// <summary>Read from the source export.</summary>
    Source,

    /// <summary>Known zero: cleared, nothing read.</summary>
    Zero,

    /// <summary>Kept data read back through the target's backing chain, only to complete a digest block.</summary>
    Target,
}

/// <summary>A disk range a unit needs in memory, at <see cref="PackedOffset"/> in the unit's buffer.</summary>
public readonly record struct Segment(long Offset, long Length, SegmentSource Source, int PackedOffset);

/// <summary>
/// Consecutive chunks handled together: what they need in memory is packed into one buffer, so a backup of many
/// small scattered changes still sends its requests in large batches.
/// </summary>
public sealed record WorkUnit(ChunkWork[] Chunks, Segment[] Segments, int PackedLength)
{
    public long Start => Chunks[0].Offset;
    public long End => Chunks[^1].Offset + Chunks[^1].Length;

    public long Bytes(SegmentSource source)
    {
        long bytes = 0;
        foreach (var s in Segments)
        {
            bytes += s.Source == source ? s.Length : 0;
        }
        return bytes;
    }
}

public static class WorkUnits
{
    /// <summary>
    /// At most this many chunks per unit, even where they need no data: a unit's digests are in memory until it is
    /// done, and a disk of any size must fit.
    /// </summary>
    public const int MaxChunks = 64;

    /// <summary>
    /// Groups consecutive chunks, as they come, into units whose needed bytes fit <paramref name="bufferSize"/>. Chunks
    /// that need no data (kept whole with the parent's digests, or zero with nothing below) still travel in a unit,
    /// without segments.
    /// </summary>
    public static IEnumerable<WorkUnit> Pack(IEnumerable<ChunkWork> chunks, bool hasBacking, bool parentDigests, int digestBlock, int bufferSize,
        int maxChunks = MaxChunks)
    {
        var unitChunks = new List<ChunkWork>();
        var segments = new List<Segment>();
        int packed = 0;
        foreach (var chunk in chunks)
        {
            var needed = Needed(chunk, hasBacking, parentDigests, digestBlock).ToList();
            long bytes = needed.Sum(n => n.Length);
            if (unitChunks.Count > 0 && (packed + bytes > bufferSize || unitChunks.Count == maxChunks))
            {
                yield return new WorkUnit([.. unitChunks], [.. segments], packed);
                unitChunks.Clear();
                segments.Clear();
                packed = 0;
            }
            unitChunks.Add(chunk);
            foreach (var (offset, length, source) in needed)
            {
                segments.Add(new Segment(offset, length, source, packed));
                packed += (int)length;
            }
        }
        if (unitChunks.Count > 0)
        {
            yield return new WorkUnit([.. unitChunks], [.. segments], packed);
        }
    }

    private static IEnumerable<(long Offset, long Length, SegmentSource Source)> Needed(ChunkWork chunk, bool hasBacking, bool parentDigests, int digestBlock)
    {
        if (chunk.ZeroAll && !hasBacking)
        {
            yield break;
        }
        foreach (var piece in chunk.Pieces)
        {
            switch (piece.Kind)
            {
                case PieceKind.Copy:
                    yield return (piece.Offset, piece.Length, SegmentSource.Source);
                    break;
                case PieceKind.Zero:
                    yield return (piece.Offset, piece.Length, SegmentSource.Zero);
                    break;
                default:
                    foreach (var (offset, length) in KeptRangesToRead(piece, parentDigests, digestBlock))
                    {
                        yield return (offset, length, SegmentSource.Target);
                    }
                    break;
            }
        }
    }

    /// <summary>Parts of a kept piece that share a digest block with changed data (all of it, without parent digests).</summary>
    public static IEnumerable<(long Offset, long Length)> KeptRangesToRead(Piece piece, bool parentDigests, int digestBlock)
    {
        if (!parentDigests)
        {
            yield return (piece.Offset, piece.Length);
            yield break;
        }
        long end = piece.Offset + piece.Length;
        long firstWhole = (piece.Offset + digestBlock - 1) / digestBlock * digestBlock;
        long lastWhole = end / digestBlock * digestBlock;
        if (firstWhole >= lastWhole)
        {
            yield return (piece.Offset, piece.Length);
            yield break;
        }
        if (piece.Offset < firstWhole)
        {
            yield return (piece.Offset, firstWhole - piece.Offset);
        }
        if (lastWhole < end)
        {
            yield return (lastWhole, end - lastWhole);
        }
    }
}
