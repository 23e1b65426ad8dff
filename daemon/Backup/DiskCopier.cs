using System.IO.Hashing;
using DirBackup.Errors;
using DirBackup.Nbd;

namespace DirBackup.Backup;

/// <summary>What to copy: one device's NBD export (PVE's backup access) into one target export (our qcow2).</summary>
public sealed record DiskCopyRequest
{
    public required string SourceSocket { get; init; }
    public required string SourceExport { get; init; }
    /// <summary>Set for bitmap-mode reuse: copy exactly what this bitmap marks dirty.</summary>
    public string? DirtyBitmap { get; init; }
    public required long Size { get; init; }
    public required string TargetSocket { get; init; }
    public required string TargetExport { get; init; }
    /// <summary>The target has a backing image: unwritten ranges show the parent, so zeroes must be written.</summary>
    public required bool HasBacking { get; init; }
    /// <summary>The parent's chunk digests, reused for chunks this backup keeps.</summary>
    public byte[]? ParentDigests { get; init; }
    public BandwidthLimiter? Limiter { get; init; }
    public int Workers { get; init; } = 4;
}

/// <summary>Counters of one copy, read by the progress reporter while workers update them.</summary>
public sealed class CopyStats
{
    public long ToTransfer;
    public long Done;
    public long Read;
    public long Written;
    public long ZeroBytes;
    public long Kept;
}

/// <summary>
/// The copy engine: walks the source's block status, then several workers (each with its own pair of NBD
/// connections, so many requests are in flight) copy 4 MiB chunks, store zeroes only where a parent could show
/// through, digest every chunk and trim what they copied from the source. Memory is one chunk per worker.
/// </summary>
public static class DiskCopier
{
    public const int DigestSize = 16;
    private const int ZeroGranularity = 64 * 1024;

    public static async Task<byte[]> CopyAsync(DiskCopyRequest request, CopyStats stats, Action<string> warn, CancellationToken cancellationToken)
    {
        List<ChunkWork> chunks;
        var context = request.DirtyBitmap is null ? NbdClient.BaseAllocation : NbdClient.DirtyBitmapContext(request.DirtyBitmap);
        using (var walker = NbdClient.Connect(request.SourceSocket, request.SourceExport, context))
        {
            if (walker.Size != request.Size)
            {
                throw DirBackupException.InvalidParams($"device '{request.SourceExport}': PVE gave size {request.Size}, but the NBD export has {walker.Size} bytes");
            }
            chunks = CopyPlan.Build(walker.BlockStatus(context, 0, request.Size), request.Size, request.DirtyBitmap is not null);
        }
        stats.ToTransfer = chunks.Sum(c => c.Length - c.Bytes(PieceKind.Keep));
        stats.Kept = chunks.Sum(c => c.Bytes(PieceKind.Keep));
        var digests = new byte[chunks.Count * DigestSize];
        int next = -1;
        int trimFailed = 0;
        using var failed = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        Exception? firstError = null;

        void Work()
        {
            var buffer = new byte[CopyPlan.ChunkSize];
            NbdClient? source = null;
            using var target = NbdClient.Connect(request.TargetSocket, request.TargetExport);
            try
            {
                int index;
                while ((index = Interlocked.Increment(ref next)) < chunks.Count)
                {
                    failed.Token.ThrowIfCancellationRequested();
                    var chunk = chunks[index];
                    if (chunk.KeepsAll && request.ParentDigests is { } parent && parent.Length == digests.Length)
                    {
                        parent.AsSpan(index * DigestSize, DigestSize).CopyTo(digests.AsSpan(index * DigestSize));
                        continue;
                    }
                    if (!chunk.KeepsAll && !chunk.ZeroAll)
                    {
                        source ??= NbdClient.Connect(request.SourceSocket, request.SourceExport);
                    }
                    CopyChunk(chunk, buffer, source, target, request, stats, failed.Token);
                    XxHash128.Hash(buffer.AsSpan(0, (int)chunk.Length), digests.AsSpan(index * DigestSize, DigestSize));
                    if (source is { CanTrim: true } && Volatile.Read(ref trimFailed) == 0)
                    {
                        TrimCopied(chunk, source, ref trimFailed, warn);
                    }
                }
                target.Flush();
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref firstError, e, null);
                failed.Cancel();
            }
            finally
            {
                source?.Dispose();
            }
        }

        var workers = Enumerable.Range(0, Math.Max(1, request.Workers))
            .Select(_ => Task.Factory.StartNew(Work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default))
            .ToArray();
        await Task.WhenAll(workers).ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        if (firstError is not null)
        {
            throw firstError is DirBackupException or OperationCanceledException ? firstError : DirBackupException.Io(firstError.Message, firstError);
        }
        return digests;
    }

    private static void CopyChunk(ChunkWork chunk, byte[] buffer, NbdClient? source, NbdClient target, DiskCopyRequest request, CopyStats stats, CancellationToken cancellationToken)
    {
        // First the whole chunk as it is at this backup, for its digest: kept parts come through the target's backing chain.
        foreach (var piece in chunk.Pieces)
        {
            var span = buffer.AsSpan((int)(piece.Offset - chunk.Offset), (int)piece.Length);
            switch (piece.Kind)
            {
                case PieceKind.Keep:
                    target.Read(span, piece.Offset);
                    break;
                case PieceKind.Zero:
                    span.Clear();
                    break;
                default:
                    request.Limiter?.Take(piece.Length, cancellationToken);
                    source!.Read(span, piece.Offset);
                    Interlocked.Add(ref stats.Read, piece.Length);
                    break;
            }
        }
        foreach (var piece in chunk.Pieces)
        {
            if (piece.Kind == PieceKind.Keep)
            {
                continue;
            }
            var memory = buffer.AsMemory((int)(piece.Offset - chunk.Offset), (int)piece.Length);
            foreach (var (start, length, isZero) in piece.Kind == PieceKind.Zero ? [(0, memory.Length, true)] : CopyPlan.ZeroRuns(memory, ZeroGranularity))
            {
                if (isZero)
                {
                    Interlocked.Add(ref stats.ZeroBytes, length);
                    if (request.HasBacking)
                    {
                        target.Zero(length, piece.Offset + start);
                    }
                }
                else
                {
                    target.Write(memory.Span.Slice(start, length), piece.Offset + start);
                    Interlocked.Add(ref stats.Written, length);
                }
            }
            Interlocked.Add(ref stats.Done, piece.Length);
        }
    }

    /// <summary>PVE's fleecing image grows with every block the guest rewrites until the backup has read it: give it back.</summary>
    private static void TrimCopied(ChunkWork chunk, NbdClient source, ref int trimFailed, Action<string> warn)
    {
        foreach (var piece in chunk.Pieces)
        {
            if (piece.Kind != PieceKind.Copy)
            {
                continue;
            }
            try
            {
                source.Trim(piece.Length, piece.Offset);
            }
            catch (DirBackupException e)
            {
                if (Interlocked.Exchange(ref trimFailed, 1) == 0)
                {
                    warn($"discarding copied data in the source failed, not trying again for this disk: {e.Message}");
                }
                return;
            }
        }
    }
}
