using DirBackup.Backup;
using DirBackup.Errors;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Unit;

public sealed class DigestFileTests : IDisposable
{
    private const int Block = DiskCopier.DigestBlock;
    private readonly TempDir _dir = new("dirbackup-digests");

    [Fact]
    public void Digests_written_out_of_order_land_at_their_blocks_and_read_back()
    {
        var path = _dir.Combine("d.digests");
        using (var file = DigestFile.Create(path, 3L * Block + 100))
        {
            file.Write(2L * Block, Enumerable.Repeat((byte)3, 32).ToArray());
            file.Write(0, Enumerable.Repeat((byte)1, 32).ToArray());
            file.Complete();
        }
        Assert.Equal(Enumerable.Repeat((byte)1, 32).Concat(Enumerable.Repeat((byte)3, 32)), File.ReadAllBytes(path));
        using var parent = DigestFile.OpenParent(path, 3L * Block + 100);
        Assert.NotNull(parent);
        var read = new byte[16];
        parent.Read(3L * Block, read);
        Assert.All(read, b => Assert.Equal(3, b));
    }

    [Fact]
    public void A_file_missing_its_last_digests_is_refused_rather_than_kept()
    {
        var path = _dir.Combine("short.digests");
        using var file = DigestFile.Create(path, 4L * Block);
        file.Write(0, new byte[48]);
        var e = Assert.Throws<DirBackupException>(file.Complete);
        Assert.Equal($"{path} holds 48 bytes of digests instead of 64", e.Message);
    }

    [Fact]
    public void A_parent_without_digests_or_with_those_of_another_size_offers_none()
    {
        var path = _dir.Combine("p.digests");
        File.WriteAllBytes(path, new byte[64]);
        Assert.Null(DigestFile.OpenParent(_dir.Combine("absent.digests"), 4L * Block));
        Assert.Null(DigestFile.OpenParent(path, 5L * Block));
        using var same = DigestFile.OpenParent(path, 4L * Block);
        Assert.NotNull(same);
    }

    [Fact]
    public void A_digest_file_is_never_written_over()
    {
        var path = _dir.Combine("existing.digests");
        File.WriteAllBytes(path, [1, 2, 3]);
        Assert.Throws<IOException>(() => DigestFile.Create(path, Block));
        Assert.Equal([1, 2, 3], File.ReadAllBytes(path));
    }

    public void Dispose() => _dir.Dispose();
}
