using System.Buffers;
using System.IO.Hashing;

namespace DirBackup.Backup;

/// <summary>
/// One work unit's block digests as a copy fills them in: the XXH128 of every <see cref="DiskCopier.DigestBlock"/>
/// block of <c>[start, end)</c>, and for each block whether it is done yet and was all zeroes, so that no one reads a
/// block twice to find out. <c>start</c> is a block boundary; so is <c>end</c>, unless it is
/// the disk's end. Its memory is pooled: every unit of a copy has one, and a copy's garbage is what grows the daemon's
/// heap until the collector runs.
/// </summary>
public sealed class BlockDigests : IDisposable
{
    private const byte Data = 1;
    private const byte Zero = 2;
    private static readonly byte[] ZeroBlockDigest = XxHash128.Hash(new byte[DiskCopier.DigestBlock]);

    private readonly long _start;
    private readonly long _end;
    private readonly int _blocks;
    private byte[] _states;
    private byte[] _digests;

    public BlockDigests(long start, long end)
    {
        _start = start;
        _end = end;
        _blocks = (int)DiskCopier.BlockCount(end - start);
        _states = ArrayPool<byte>.Shared.Rent(_blocks);
        _digests = ArrayPool<byte>.Shared.Rent(_blocks * DiskCopier.DigestSize);
        Array.Clear(_states, 0, _blocks);
        Array.Clear(_digests, 0, _blocks * DiskCopier.DigestSize);
    }

    public Span<byte> Digests => _digests.AsSpan(0, _blocks * DiskCopier.DigestSize);

    private int IndexOf(long blockStart) => (int)((blockStart - _start) / DiskCopier.DigestBlock);

    public bool IsDone(long blockStart) => _states[IndexOf(blockStart)] != 0;

    /// <summary>Whether a digested block was all zeroes; null for one not digested yet.</summary>
    public bool? IsZero(long blockStart) => _states[IndexOf(blockStart)] switch
    {
        Data => false,
        Zero => true,
        _ => null,
    };

    public Span<byte> DigestsOf(long offset, int blocks) => Digests.Slice(IndexOf(offset) * DiskCopier.DigestSize, blocks * DiskCopier.DigestSize);

    /// <summary>Digests the blocks that lie whole in data just read (the disk's last block may be short).</summary>
    public unsafe void DigestWholeBlocks(byte* data, long offset, long length)
    {
        long dataEnd = offset + length;
        for (long block = (offset + DiskCopier.DigestBlock - 1) / DiskCopier.DigestBlock * DiskCopier.DigestBlock; block < dataEnd; block += DiskCopier.DigestBlock)
        {
            long blockEnd = Math.Min(block + DiskCopier.DigestBlock, _end);
            if (blockEnd > dataEnd)
            {
                break;
            }
            var bytes = new ReadOnlySpan<byte>(data + (block - offset), (int)(blockEnd - block));
            bool zero = !bytes.ContainsAnyExcept((byte)0);
            Digest(bytes, zero, DigestsOf(block, 1));
            _states[IndexOf(block)] = zero ? Zero : Data;
        }
    }

    public void Dispose()
    {
        ArrayPool<byte>.Shared.Return(_states);
        ArrayPool<byte>.Shared.Return(_digests);
        _states = [];
        _digests = [];
    }

    public static void Digest(ReadOnlySpan<byte> block, bool zero, Span<byte> digest)
    {
        if (zero)
        {
            DigestZeroes(block.Length, digest);
        }
        else
        {
            XxHash128.Hash(block, digest);
        }
    }

    public static void DigestZeroes(int length, Span<byte> digest)
    {
        if (length == DiskCopier.DigestBlock)
        {
            ZeroBlockDigest.CopyTo(digest);
        }
        else
        {
            XxHash128.Hash(new byte[length], digest);
        }
    }
}
