using System.IO.Hashing;

namespace DirBackup.Backup;

/// <summary>
/// One disk's block digests as a copy fills them in: the XXH128 of every <see cref="DiskCopier.DigestBlock"/> block,
/// and for each block whether it is done yet and was all zeroes, so that no one reads a block twice to find out.
/// </summary>
public sealed class BlockDigests(long diskSize)
{
    private const byte Data = 1;
    private const byte Zero = 2;
    private static readonly byte[] ZeroBlockDigest = XxHash128.Hash(new byte[DiskCopier.DigestBlock]);

    private readonly byte[] _states = new byte[DiskCopier.BlockCount(diskSize)];

    public byte[] Digests { get; } = new byte[DiskCopier.BlockCount(diskSize) * DiskCopier.DigestSize];

    public bool IsDone(long blockStart) => _states[blockStart / DiskCopier.DigestBlock] != 0;

    /// <summary>Whether a digested block was all zeroes; null for one not digested yet.</summary>
    public bool? IsZero(long blockStart) => _states[blockStart / DiskCopier.DigestBlock] switch
    {
        Data => false,
        Zero => true,
        _ => null,
    };

    public Span<byte> DigestsOf(long offset, int blocks) =>
        Digests.AsSpan((int)(offset / DiskCopier.DigestBlock * DiskCopier.DigestSize), blocks * DiskCopier.DigestSize);

    /// <summary>Digests the blocks that lie whole in data just read (the disk's last block may be short).</summary>
    public unsafe void DigestWholeBlocks(byte* data, long offset, long length)
    {
        long end = offset + length;
        for (long block = (offset + DiskCopier.DigestBlock - 1) / DiskCopier.DigestBlock * DiskCopier.DigestBlock; block < end; block += DiskCopier.DigestBlock)
        {
            long blockEnd = Math.Min(block + DiskCopier.DigestBlock, diskSize);
            if (blockEnd > end)
            {
                break;
            }
            var bytes = new ReadOnlySpan<byte>(data + (block - offset), (int)(blockEnd - block));
            bool zero = !bytes.ContainsAnyExcept((byte)0);
            Digest(bytes, zero, DigestsOf(block, 1));
            _states[block / DiskCopier.DigestBlock] = zero ? Zero : Data;
        }
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
