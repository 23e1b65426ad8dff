using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using DirBackup.Errors;

namespace DirBackup.Qemu;

/// <summary>
/// A QEMU Machine Protocol session with one qemu-storage-daemon: one command at a time, each answered by a line with
/// "return" or "error"; the events QEMU sends in between are skipped.
/// </summary>
public sealed class QmpConnection : IDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly StreamReader _reader;
    private readonly string _describe;

    private QmpConnection(Socket socket, string describe)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = new StreamReader(_stream, Encoding.UTF8);
        _describe = describe;
    }

    /// <summary>Connects, reads QEMU's greeting and leaves capabilities negotiation mode.</summary>
    public static async Task<QmpConnection> OpenAsync(Socket connected, string describe, CancellationToken cancellationToken)
    {
        var qmp = new QmpConnection(connected, describe);
        try
        {
            var greeting = await qmp.ReadMessageAsync(cancellationToken).ConfigureAwait(false);
            if (greeting["QMP"] is null)
            {
                throw DirBackupException.Io($"{describe} did not greet with QMP");
            }
            await qmp.ExecuteAsync("qmp_capabilities", null, cancellationToken).ConfigureAwait(false);
            return qmp;
        }
        catch
        {
            qmp.Dispose();
            throw;
        }
    }

    /// <summary>Runs one command; QEMU's refusal becomes an I/O error with its own description.</summary>
    public async Task<JsonNode?> ExecuteAsync(string command, JsonObject? arguments, CancellationToken cancellationToken)
    {
        var request = new JsonObject { ["execute"] = command };
        if (arguments is not null)
        {
            request["arguments"] = arguments;
        }
        await _stream.WriteAsync(Encoding.UTF8.GetBytes(request.ToJsonString() + "\n"), cancellationToken).ConfigureAwait(false);
        while (true)
        {
            var reply = await ReadMessageAsync(cancellationToken).ConfigureAwait(false);
            if (reply["error"] is JsonNode error)
            {
                throw DirBackupException.Io($"{_describe}: {command}: {DirBackupException.OneLine(error["desc"]?.GetValue<string>() ?? error.ToJsonString())}");
            }
            if (reply.AsObject().ContainsKey("return"))
            {
                return reply["return"];
            }
        }
    }

    private async Task<JsonNode> ReadMessageAsync(CancellationToken cancellationToken)
    {
        var line = await _reader.ReadLineAsync(cancellationToken).ConfigureAwait(false)
            ?? throw DirBackupException.Io($"{_describe} closed its QMP connection");
        try
        {
            return JsonNode.Parse(line) ?? throw new JsonException("null");
        }
        catch (JsonException)
        {
            throw DirBackupException.Io($"{_describe} sent a QMP line that is not JSON: {DirBackupException.OneLine(line)}");
        }
    }

    public void Dispose()
    {
        _reader.Dispose();
        _stream.Dispose();
        _socket.Dispose();
    }
}
