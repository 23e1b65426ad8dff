using System.Text;
using DirBackup.Rpc;
using Xunit;

namespace DirBackup.Tests.Unit;

public class LineBoundedStreamTests
{
    private static async Task<string> ReadAllAsync(Stream stream, int chunk)
    {
        var buffer = new byte[chunk];
        var sb = new StringBuilder();
        int n;
        while ((n = await stream.ReadAsync(buffer)) > 0)
        {
            sb.Append(Encoding.ASCII.GetString(buffer, 0, n));
        }
        return sb.ToString();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(4096)]
    public async Task Passes_lines_within_the_bound_whatever_the_chunking(int chunk)
    {
        var text = "0123456789\nabc\n\n0123456789\n";
        var stream = new LineBoundedStream(new MemoryStream(Encoding.ASCII.GetBytes(text)), 10);
        Assert.Equal(text, await ReadAllAsync(stream, chunk));
        Assert.False(stream.Overflowed);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(5)]
    [InlineData(4096)]
    public async Task Refuses_a_line_over_the_bound_before_its_newline(int chunk)
    {
        var text = "short\n" + new string('x', 11) + "\nlater\n";
        var stream = new LineBoundedStream(new MemoryStream(Encoding.ASCII.GetBytes(text)), 10);
        await Assert.ThrowsAsync<MessageTooLargeException>(() => ReadAllAsync(stream, chunk));
        Assert.True(stream.Overflowed);
    }

    [Fact]
    public async Task Refuses_a_long_line_inside_a_chunk_of_many_lines()
    {
        var text = "a\n" + new string('y', 30) + "\nb\n";
        var stream = new LineBoundedStream(new MemoryStream(Encoding.ASCII.GetBytes(text)), 10);
        await Assert.ThrowsAsync<MessageTooLargeException>(() => ReadAllAsync(stream, 4096));
    }
}
