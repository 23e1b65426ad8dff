using System.Text;
using DirBackup.Errors;
using DirBackup.Qemu;
using DirBackup.Restore;
using Xunit;

namespace DirBackup.Tests.Unit;

public class ChainMapTests
{
    // qemu-img map's shape: depth 0 is the top layer; a chain of two layers.
    private const string TwoLayers = """
        [{ "start": 0, "length": 524288, "depth": 1, "present": true, "zero": false, "data": true, "offset": 327680},
        { "start": 524288, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true, "offset": 393216},
        { "start": 1572864, "length": 2621440, "depth": 1, "present": false, "zero": true, "data": false},
        { "start": 4194304, "length": 1048576, "depth": 1, "present": true, "zero": true, "data": false},
        { "start": 5242880, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 1441792},
        { "start": 5308416, "length": 3080192, "depth": 1, "present": false, "zero": true, "data": false}]
        """;

    private const long Size = 8L << 20;

    private static ChainMap? Parse(string json, int layers = 2, long size = Size) => ChainMap.Parse(Encoding.UTF8.GetBytes(json), layers, size);

    [Fact]
    public void Each_position_reads_from_the_layer_that_holds_it_at_its_offset_in_that_file()
    {
        var map = Parse(TwoLayers)!;

        Assert.Equal((0, 327680L + 4096, 524288L - 4096), map.Locate(4096));
        Assert.Equal((1, 393216L + 10, 1048576L - 10), map.Locate(524288 + 10));
        Assert.Equal((1, 1441792L, 65536L), map.Locate(5242880));
        Assert.Equal(524288 + 1048576 + 65536, map.DataBytes);
    }

    [Fact]
    public void Unallocated_and_zero_ranges_next_to_each_other_are_one_run_of_zeroes()
    {
        var map = Parse(TwoLayers)!;

        Assert.Equal((ChainMap.Zero, 0L, 5242880L - 2000000), map.Locate(2000000));
        Assert.Equal(5, map.RangeCount); // two data ranges, zeroes, data, zeroes
    }

    [Fact]
    public void Seek_data_and_seek_hole_follow_the_zero_runs_and_the_end_counts_as_a_hole()
    {
        var map = Parse(TwoLayers)!;

        Assert.Equal(100, map.NextData(100));
        Assert.Equal(5242880, map.NextData(1572864));
        Assert.Equal(-1, map.NextData(5308416));
        Assert.Equal(-1, map.NextData(Size));
        Assert.Equal(1572864, map.NextHole(0));
        Assert.Equal(2000000, map.NextHole(2000000));
        Assert.Equal(5308416, map.NextHole(5242880));
        Assert.Equal(-1, map.NextHole(Size));
    }

    [Fact]
    public void A_disk_full_of_data_has_its_only_hole_at_the_end()
    {
        var map = Parse("""[{ "start": 0, "length": 8388608, "depth": 0, "present": true, "zero": false, "data": true, "offset": 0}]""", 1)!;

        Assert.Equal(Size, map.NextHole(0));
        Assert.Equal(4096, map.NextData(4096));
    }

    [Fact]
    public void Data_without_a_file_offset_asks_for_qemu_to_serve_the_chain()
    {
        // Compressed clusters: qemu-img map reports data but no offset to read it from.
        Assert.Null(Parse("""[{ "start": 0, "length": 8388608, "depth": 0, "present": true, "zero": false, "data": true}]""", 1));
    }

    [Theory]
    [InlineData("""[{ "start": 0, "length": 4194304, "depth": 0, "data": false}]""")] // does not reach the end
    [InlineData("""[{ "start": 0, "length": 4194304, "depth": 0, "data": false}, { "start": 5242880, "length": 3145728, "depth": 0, "data": false}]""")] // a gap
    [InlineData("""[{ "start": 0, "length": 8388608, "depth": 2, "data": true, "offset": 0}]""")] // deeper than the chain
    [InlineData("""{ "start": 0 }""")]
    [InlineData("""[{ "start": 0, "length": 8388608, "depth": 0, "data": false}""")] // cut short
    [InlineData("""[{ "start": 0, "length": "all", "depth": 0, "data": false}]""")]
    [InlineData("""[{ "start": 0, "length": 8388608, "depth": 0, "data": false} "more"]""")]
    public void A_map_that_does_not_describe_the_disk_exactly_is_refused(string json)
    {
        var e = Assert.Throws<DirBackupException>(() => Parse(json));
        Assert.StartsWith("qemu-img map gave an unusable map", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_map_read_as_it_comes_a_byte_at_a_time_is_the_map_read_whole()
    {
        var whole = Parse(TwoLayers)!;
        using var trickle = new TrickleStream(Encoding.UTF8.GetBytes(TwoLayers));

        var read = (await ChainMap.ReadAsync(trickle, 2, Size, CancellationToken.None))!;

        Assert.Equal(whole.RangeCount, read.RangeCount);
        Assert.Equal(whole.DataRanges(), read.DataRanges());
        Assert.Equal(whole.Locate(2000000), read.Locate(2000000));
        Assert.True(trickle.Reads > TwoLayers.Length / 2, "the stream was not read a little at a time");
    }

    [Fact]
    public async Task A_map_cut_short_in_the_middle_of_a_range_is_refused()
    {
        using var trickle = new TrickleStream(Encoding.UTF8.GetBytes(TwoLayers[..300]));

        var e = await Assert.ThrowsAsync<DirBackupException>(() => ChainMap.ReadAsync(trickle, 2, Size, CancellationToken.None));

        Assert.Equal("qemu-img map gave an unusable map: it ends before its list does", e.Message);
    }

    /// <summary>Hands out at most one byte per read, as a pipe may at any point.</summary>
    private sealed class TrickleStream(byte[] bytes) : MemoryStream(bytes)
    {
        public int Reads { get; private set; }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Reads++;
            return base.ReadAsync(buffer[..Math.Min(1, buffer.Length)], cancellationToken);
        }
    }

    [Fact]
    public void The_chain_is_named_node_by_node_with_no_backing_below_the_base()
    {
        var options = QemuImg.ChainImage(["/proc/1/fd/3", "/proc/1/fd/4"], readOnly: true);

        Assert.Equal(
            """json:{"driver":"qcow2","read-only":true,"file":{"driver":"file","filename":"/proc/1/fd/4","read-only":true},"backing":{"driver":"qcow2","read-only":true,"file":{"driver":"file","filename":"/proc/1/fd/3","read-only":true},"backing":null}}""",
            options);
    }

    [Fact]
    public void A_hole_shorter_than_a_mebibyte_is_shown_as_data_and_still_reads_as_zeroes()
    {
        var map = Parse("""
            [{ "start": 0, "length": 1048576, "depth": 0, "data": true, "offset": 0},
            { "start": 1048576, "length": 524288, "depth": 0, "data": false},
            { "start": 1572864, "length": 1048576, "depth": 0, "data": true, "offset": 1048576},
            { "start": 2621440, "length": 5767168, "depth": 0, "data": false}]
            """, 1)!;

        Assert.Equal(1048576 + 4096, map.NextData(1048576 + 4096));
        Assert.Equal(2621440, map.NextHole(0));
        Assert.Equal((ChainMap.Zero, 0L, 524288L), map.Locate(1048576));
    }
}
