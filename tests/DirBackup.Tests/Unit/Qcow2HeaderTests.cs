using System.Buffers.Binary;
using System.Diagnostics;
using DirBackup.Errors;
using DirBackup.Qemu;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Unit;

/// <summary>The daemon's reading of a qcow2 header agrees with qemu-img info's, and refuses what is not a sound header.</summary>
public sealed class Qcow2HeaderTests : IDisposable
{
    private readonly TempDir _dir = new("qcow2-header");

    public void Dispose() => _dir.Dispose();

    private static readonly string LongName = "../" + new string('x', 1000) + "/drive-scsi0.qcow2";

    public static TheoryData<string, string[]> Images => new()
    {
        { "version 3, no backing file", ["-o", "cluster_size=65536"] },
        { "version 2 with a backing file", ["-o", "compat=0.10", "-u", "-b", "../qemu-1700000000/drive-scsi0.qcow2", "-F", "qcow2"] },
        { "512-byte clusters with a backing file", ["-o", "cluster_size=512", "-u", "-b", "../qemu-1700000000/drive-scsi0.qcow2", "-F", "qcow2"] },
        { "2 MiB clusters with a backing name of 1021 bytes", ["-o", "cluster_size=2M", "-u", "-b", LongName, "-F", "qcow2"] },
        { "a json: backing name", ["-u", "-b", "json:{\"file\":{\"driver\":\"file\",\"filename\":\"/etc/shadow\"}}", "-F", "raw"] },
        { "an external data file", ["-o", "data_file=DATA"] },
        { "an external raw data file", ["-o", "data_file=DATA,data_file_raw=on"] },
    };

    [Theory]
    [MemberData(nameof(Images))]
    public async Task Reads_what_qemu_img_info_reports(string what, string[] options)
    {
        string image = _dir.Combine("image.qcow2");
        var args = new List<string> { "create", "-q", "-f", "qcow2" };
        args.AddRange(options.Select(o => o.Replace("DATA", image + ".data", StringComparison.Ordinal)));
        args.AddRange([image, "1073742336"]); // 1 GiB and a sector: not a whole number of clusters
        await SourceDisk.Run("qemu-img", [.. args]);
        if (what.StartsWith("version 3", StringComparison.Ordinal))
        {
            // A bitmap adds a header extension of its own ahead of the end marker.
            await SourceDisk.Run("qemu-img", "bitmap", "--add", image, "b0");
        }

        var expected = await QemuImgInfo.ReadAsync(image);
        var header = Qcow2Header.Read(image);

        Assert.Equal(expected.VirtualSize, header.VirtualSize);
        Assert.Equal(expected.BackingFile, header.BackingFile);
        Assert.Equal(expected.DataFile, header.DataFile);
        Assert.Equal(expected.DataFile is not null, header.HasExternalData);
    }

    [Fact]
    public async Task An_image_flagged_for_an_external_data_file_it_does_not_name_is_seen_as_having_one()
    {
        string image = await ImageAsync();
        Patch(image, 72, U64(1 << 2));

        var header = Qcow2Header.Read(image);

        Assert.True(header.HasExternalData);
        Assert.Null(header.DataFile);
    }

    [Fact]
    public async Task A_nul_ends_the_backing_name_as_it_does_for_qemu()
    {
        string image = await ImageAsync("-u", "-b", "../qemu-1700000000/drive-scsi0.qcow2XYZ", "-F", "qcow2");
        long nameOffset = ReadHeader(image, 8, 8);
        Patch(image, (int)nameOffset + "../qemu-1700000000/drive-scsi0.qcow2".Length, [0]);

        Assert.Equal("../qemu-1700000000/drive-scsi0.qcow2", Qcow2Header.Read(image).BackingFile);
    }

    [Fact]
    public void A_file_that_is_not_qcow2_is_refused()
    {
        string raw = _dir.Combine("raw.img");
        File.WriteAllBytes(raw, new byte[1 << 20]);
        string empty = _dir.Combine("empty.img");
        File.WriteAllBytes(empty, []);

        Assert.Equal($"'{raw}' is not a qcow2 image (no qcow2 magic)", Refused(raw));
        Assert.Equal($"'{empty}' is not a qcow2 image (no qcow2 magic)", Refused(empty));
    }

    [Fact]
    public async Task A_header_cut_short_is_refused()
    {
        string image = await ImageAsync();
        using (var f = File.OpenWrite(image))
        {
            f.SetLength(80);
        }

        Assert.Equal($"'{image}' is not a qcow2 image (its header is cut short)", Refused(image));
    }

    [Fact]
    public async Task An_unknown_version_is_refused()
    {
        string image = await ImageAsync();
        Patch(image, 4, U32(4));

        Assert.Equal($"'{image}' is not a qcow2 image (version 4 is not 2 or 3)", Refused(image));
    }

    [Fact]
    public async Task A_header_extension_longer_than_the_cluster_is_refused()
    {
        string image = await ImageAsync();
        int firstExtension = (int)ReadHeader(image, 100, 4);
        Patch(image, firstExtension + 4, U32(0x7fff0000));

        Assert.Equal($"'{image}' is not a qcow2 image (a header extension runs past its end)", Refused(image));
    }

    [Fact]
    public async Task A_backing_name_outside_the_first_cluster_is_refused()
    {
        string image = await ImageAsync("-u", "-b", "../qemu-1700000000/drive-scsi0.qcow2", "-F", "qcow2");
        Patch(image, 8, U64(65536 - 4));

        Assert.Equal($"'{image}' is not a qcow2 image (its backing file name lies outside the first cluster or is too long)", Refused(image));
    }

    [Fact]
    public async Task A_link_or_a_fifo_in_an_image_s_place_is_refused_without_waiting()
    {
        string image = await ImageAsync();
        string link = _dir.Combine("link.qcow2");
        File.CreateSymbolicLink(link, image);
        string fifo = _dir.Combine("fifo.qcow2");
        using (var mkfifo = Process.Start("mkfifo", [fifo]))
        {
            mkfifo.WaitForExit();
        }

        Assert.StartsWith($"cannot open '{link}': ", Refused(link), StringComparison.Ordinal);
        Assert.Equal($"'{fifo}' is not a regular file", Refused(fifo));
    }

    private async Task<string> ImageAsync(params string[] options)
    {
        string image = _dir.Combine("image.qcow2");
        File.Delete(image);
        await SourceDisk.Run("qemu-img", ["create", "-q", "-f", "qcow2", .. options, image, "1G"]);
        return image;
    }

    private static string Refused(string path)
    {
        var e = Assert.Throws<DirBackupException>(() => Qcow2Header.Read(path));
        Assert.Equal(ErrorCode.IoError, e.Code);
        Assert.DoesNotContain('\n', e.Message);
        return e.Message;
    }

    private static long ReadHeader(string image, int offset, int length)
    {
        var bytes = File.ReadAllBytes(image).AsSpan(offset, length);
        return length == 8 ? (long)BinaryPrimitives.ReadUInt64BigEndian(bytes) : BinaryPrimitives.ReadUInt32BigEndian(bytes);
    }

    private static void Patch(string image, int offset, byte[] bytes)
    {
        using var f = File.OpenWrite(image);
        f.Position = offset;
        f.Write(bytes);
    }

    private static byte[] U32(uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }

    private static byte[] U64(ulong value)
    {
        var bytes = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, value);
        return bytes;
    }
}
