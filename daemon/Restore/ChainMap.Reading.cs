using System.Text.Json;
using DirBackup.Qemu;

namespace DirBackup.Restore;

/// <summary>
/// Building the map from <c>qemu-img map</c>'s JSON as it comes: a busy disk's chain has millions of ranges, over
/// 100 bytes of JSON each, so neither the text nor a list of parsed objects is held, only the map's own arrays.
/// </summary>
public sealed partial class ChainMap
{
    /// <summary>
    /// Maps the chain whose layers (base first) are open at <paramref name="layerFiles"/>. Returns null when some data
    /// cannot be read straight from a file (compressed or encrypted clusters): such a chain needs QEMU to serve it.
    /// </summary>
    public static Task<ChainMap?> BuildAsync(IReadOnlyList<string> layerFiles, long size, CancellationToken cancellationToken) =>
        ChildProcess.RunAsync(QemuImg.Tool, ["map", "--output=json", QemuImg.ChainImage(layerFiles, readOnly: true)],
            (output, token) => ReadAsync(output, layerFiles.Count, size, token), cancellationToken);

    public static async Task<ChainMap?> ReadAsync(Stream json, int layerCount, long size, CancellationToken cancellationToken)
    {
        var parser = new Parser(layerCount, size);
        var buffer = new byte[64 << 10];
        int filled = 0;
        while (true)
        {
            int read = await json.ReadAsync(buffer.AsMemory(filled), cancellationToken).ConfigureAwait(false);
            filled += read;
            int consumed = parser.Feed(buffer.AsSpan(0, filled));
            if (read == 0)
            {
                return parser.Finish();
            }
            buffer.AsSpan(consumed, filled - consumed).CopyTo(buffer);
            filled -= consumed;
            if (filled == buffer.Length)
            {
                // One range's text longer than the buffer: no qemu-img writes that, but a longer one still parses.
                Array.Resize(ref buffer, buffer.Length * 2);
            }
        }
    }

    public static ChainMap? Parse(ReadOnlySpan<byte> json, int layerCount, long size)
    {
        var parser = new Parser(layerCount, size);
        parser.Feed(json);
        return parser.Finish();
    }

    /// <summary>
    /// Takes the JSON a piece at a time; each piece is parsed up to its last whole range, and the rest comes again
    /// at the front of the next piece.
    /// </summary>
    private sealed class Parser(int layerCount, long size)
    {
        private readonly List<long> _starts = [];
        private readonly List<long> _offsets = [];
        private readonly List<int> _layers = [];
        private JsonReaderState _state;
        private long _expected;
        private bool _started, _ended, _needsQemu;

        /// <summary>Never told the piece is the last: a cut-short list is found missing its end at <see cref="Finish"/>.</summary>
        public int Feed(ReadOnlySpan<byte> json)
        {
            try
            {
                return FeedRanges(json);
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
            {
                throw Unusable(e.Message);
            }
        }

        private int FeedRanges(ReadOnlySpan<byte> json)
        {
            var reader = new Utf8JsonReader(json, isFinalBlock: false, _state);
            while (!_ended)
            {
                var beforeRange = reader;
                if (!reader.Read())
                {
                    break;
                }
                if (!_started)
                {
                    Expect(reader.TokenType == JsonTokenType.StartArray, "not a list");
                    _started = true;
                }
                else if (reader.TokenType == JsonTokenType.EndArray)
                {
                    _ended = true;
                }
                else if (reader.TokenType != JsonTokenType.StartObject)
                {
                    throw Unusable("not a list of ranges");
                }
                else if (!TryReadRange(ref reader))
                {
                    reader = beforeRange;
                    break;
                }
            }
            _state = reader.CurrentState;
            return (int)reader.BytesConsumed;
        }

        public ChainMap? Finish()
        {
            Expect(_ended, "it ends before its list does");
            Expect(_expected == size, $"the map covers {_expected} of {size} bytes");
            return _needsQemu ? null : new ChainMap(size, [.. _starts], [.. _offsets], [.. _layers]);
        }

        /// <summary>One range, from after its opening brace; false when the piece ends first.</summary>
        private bool TryReadRange(ref Utf8JsonReader reader)
        {
            long start = -1, length = -1, offset = -1;
            int depth = -1;
            bool data = false;
            while (true)
            {
                if (!reader.Read())
                {
                    return false;
                }
                if (reader.TokenType == JsonTokenType.EndObject)
                {
                    break;
                }
                Expect(reader.TokenType == JsonTokenType.PropertyName, "a range is not an object of named values");
                bool isStart = reader.ValueTextEquals("start"u8), isLength = reader.ValueTextEquals("length"u8),
                    isDepth = reader.ValueTextEquals("depth"u8), isData = reader.ValueTextEquals("data"u8), isOffset = reader.ValueTextEquals("offset"u8);
                if (!reader.Read() || (reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray && !reader.TrySkip()))
                {
                    return false;
                }
                if (isStart) start = reader.GetInt64();
                else if (isLength) length = reader.GetInt64();
                else if (isDepth) depth = reader.GetInt32();
                else if (isData) data = reader.GetBoolean();
                else if (isOffset) offset = reader.GetInt64();
            }
            // Checked without Expect: its message, formatted for each of millions of ranges, was most of the garbage.
            if (start != _expected || length <= 0)
            {
                throw Unusable($"range at {start} does not follow {_expected}");
            }
            _expected = start + length;
            if (data && offset < 0)
            {
                _needsQemu = true;
                return true;
            }
            if (data && (depth < 0 || depth >= layerCount))
            {
                throw Unusable($"depth {depth} is not in a chain of {layerCount}");
            }
            int layer = data ? layerCount - 1 - depth : Zero;
            if (_layers.Count == 0 || _layers[^1] != Zero || layer != Zero)
            {
                _starts.Add(start);
                _offsets.Add(data ? offset : 0);
                _layers.Add(layer);
            }
            return true;
        }
    }
}
