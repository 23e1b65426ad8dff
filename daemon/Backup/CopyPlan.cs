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
public sealed record ChunkWork(int Index, long Offset, long Length, Piece[] Pieces)
{
    public bool KeepsAll => Pieces.All(p => p.Kind == PieceKind.Keep);
    public bool ZeroAll => Pieces.All(p => p.Kind == PieceKind.Zero);
    public long Bytes(PieceKind kind) => Pieces.Where(p => p.Kind == kind).Sum(p => p.Length);
}

/// <summary>Turns a block-status map into per-chunk work, checking the map covers the disk exactly.</summary>
public static class CopyPlan
{
    public const int ChunkSize = 4 << 20;

    /// <param name="fromDirtyBitmap">true: extents of qemu:dirty-bitmap (dirty = copy, clean = keep); false: base:allocation (zero = zero, else copy).</param>
    public static List<ChunkWork> Build(IReadOnlyList<Extent> extents, long diskSize, bool fromDirtyBitmap, int chunkSize = ChunkSize)
    {
        var chunks = new List<ChunkWork>((int)((diskSize + chunkSize - 1) / chunkSize));
        var pieces = new List<Piece>();
        long covered = 0;
        int e = 0;
        for (long chunkStart = 0; chunkStart < diskSize; chunkStart += chunkSize)
        {
            long chunkEnd = Math.Min(chunkStart + chunkSize, diskSize);
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
                long end = Math.Min(extent.End, chunkEnd);
                var kind = fromDirtyBitmap
                    ? ((extent.Flags & Extent.Dirty) != 0 ? PieceKind.Copy : PieceKind.Keep)
                    : ((extent.Flags & Extent.Zero) != 0 ? PieceKind.Zero : PieceKind.Copy);
                if (pieces.Count > 0 && pieces[^1].Kind == kind)
                {
                    pieces[^1] = pieces[^1] with { Length = pieces[^1].Length + (end - position) };
                }
                else
                {
                    pieces.Add(new Piece(position, end - position, kind));
                }
                covered += end - position;
                position = end;
            }
            chunks.Add(new ChunkWork(chunks.Count, chunkStart, chunkEnd - chunkStart, [.. pieces]));
        }
        return chunks;
    }

    /// <summary>
    /// Splits a buffer into runs of data and runs of zeroes at <paramref name="granularity"/>, so zeroes
    /// inside a copied range are not stored as data.
    /// </summary>
    public static IEnumerable<(int Start, int Length, bool IsZero)> ZeroRuns(ReadOnlyMemory<byte> buffer, int granularity)
    {
        int runStart = 0;
        bool? runZero = null;
        for (int start = 0; start < buffer.Length; start += granularity)
        {
            int length = Math.Min(granularity, buffer.Length - start);
            bool zero = !buffer.Span.Slice(start, length).ContainsAnyExcept((byte)0);
            if (runZero is bool current && current != zero)
            {
                yield return (runStart, start - runStart, current);
                runStart = start;
            }
            runZero = zero;
        }
        if (runZero is bool last)
        {
            yield return (runStart, buffer.Length - runStart, last);
        }
    }
}
