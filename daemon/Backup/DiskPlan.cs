using DirBackup.Errors;
using DirBackup.Nbd;

namespace DirBackup.Backup;

/// <summary>
/// What a backup copies of one disk, from the source's block status: the dirty bitmap for an incremental, allocation
/// otherwise. The map is walked a window at a time, once up front for the totals the progress lines need and again
/// as the copy goes, so that a disk of any size is planned in bounded memory: a fragmented map of a large disk holds
/// millions of extents.
/// </summary>
public sealed class DiskPlan : IDisposable
{
    /// <summary>How much of the disk one walk holds in memory, as extents and then as chunks.</summary>
    public const long Window = 1L << 30;

    private readonly NbdClient _walker;
    private readonly string _context;
    private readonly bool _fromDirtyBitmap;

    private DiskPlan(NbdClient walker, string context, bool fromDirtyBitmap, long size)
    {
        _walker = walker;
        _context = context;
        _fromDirtyBitmap = fromDirtyBitmap;
        Size = size;
    }

    public long Size { get; }

    /// <summary>Bytes the backup reads or stores as zeroes: everything but what it keeps.</summary>
    public long ToTransfer { get; private set; }

    /// <summary>Bytes an incremental keeps from its parent.</summary>
    public long Kept { get; private set; }

    /// <summary>Connects to the source for its block status and walks it once for the totals. Separate from the copy so it can run while the target is being set up.</summary>
    public static DiskPlan Walk(string sourceSocket, string sourceExport, string? dirtyBitmap, long size)
    {
        var context = dirtyBitmap is null ? NbdClient.BaseAllocation : NbdClient.DirtyBitmapContext(dirtyBitmap);
        var walker = NbdClient.Connect(sourceSocket, sourceExport, context);
        try
        {
            if (walker.Size != size)
            {
                throw DirBackupException.InvalidParams($"device '{sourceExport}': PVE gave size {size}, but the NBD export has {walker.Size} bytes");
            }
            var plan = new DiskPlan(walker, context, dirtyBitmap is not null, size);
            foreach (var chunk in plan.Chunks())
            {
                long kept = chunk.Bytes(PieceKind.Keep);
                plan.Kept += kept;
                plan.ToTransfer += chunk.Length - kept;
            }
            return plan;
        }
        catch
        {
            walker.Dispose();
            throw;
        }
    }

    /// <summary>The disk's chunks in order, the block status asked for a window at a time. One enumeration at a time.</summary>
    public IEnumerable<ChunkWork> Chunks()
    {
        for (long start = 0; start < Size; start += Window)
        {
            long end = Math.Min(start + Window, Size);
            foreach (var chunk in CopyPlan.Build(_walker.BlockStatus(_context, start, end - start), start, end, _fromDirtyBitmap))
            {
                yield return chunk;
            }
        }
    }

    public void Dispose() => _walker.Dispose();
}
