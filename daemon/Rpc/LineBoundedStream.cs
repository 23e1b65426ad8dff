namespace DirBackup.Rpc;

/// <summary>
/// The read side of a connection, refusing any line longer than the bound before it is buffered: the
/// JSON-RPC reader would otherwise keep growing its buffer until it sees a newline.
/// </summary>
public sealed class LineBoundedStream(Stream inner, long maxLineBytes) : Stream
{
    private long _lineLength;

    public bool Overflowed { get; private set; }
    public long MaxLineBytes => maxLineBytes;

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer) => Account(buffer[..inner.Read(buffer)]);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        int read = await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        return Account(buffer.Span[..read]);
    }

    private int Account(ReadOnlySpan<byte> data)
    {
        int newline = data.LastIndexOf((byte)'\n');
        if (newline >= 0)
        {
            // Only the longest line inside this chunk could exceed the bound alone; check it and the tail.
            int first = data.IndexOf((byte)'\n');
            if (_lineLength + first > maxLineBytes || LongestInnerLine(data[first..(newline + 1)]) > maxLineBytes)
            {
                return Overflow();
            }
            _lineLength = data.Length - newline - 1;
        }
        else
        {
            _lineLength += data.Length;
        }
        return _lineLength > maxLineBytes ? Overflow() : data.Length;
    }

    private static long LongestInnerLine(ReadOnlySpan<byte> data)
    {
        long longest = 0;
        while (!data.IsEmpty)
        {
            int next = data.IndexOf((byte)'\n');
            if (next < 0)
            {
                break;
            }
            longest = Math.Max(longest, next);
            data = data[(next + 1)..];
        }
        return longest;
    }

    private int Overflow()
    {
        Overflowed = true;
        throw new MessageTooLargeException($"a request line exceeds {maxLineBytes} bytes");
    }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

public sealed class MessageTooLargeException(string message) : IOException(message);
