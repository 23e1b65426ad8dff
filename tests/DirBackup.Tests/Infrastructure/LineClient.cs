using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DirBackup.Tests.Infrastructure;

/// <summary>
/// A deliberately plain JSON-RPC client for the tests: raw lines on a Unix socket, so a test can send what no
/// well-behaved client would (broken JSON, huge lines, calls before hello) and see exactly what comes back.
/// </summary>
public sealed class LineClient : IDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly StreamReader _reader;
    private int _nextId;

    public LineClient(string socketPath)
    {
        _socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _socket.Connect(new UnixDomainSocketEndPoint(socketPath));
        _stream = new NetworkStream(_socket, ownsSocket: true);
        _reader = new StreamReader(_stream, new UTF8Encoding(false));
        _socket.ReceiveTimeout = 30_000;
    }

    public List<JsonObject> Notifications { get; } = [];

    public static LineClient Connect(string socketPath, bool hello = true)
    {
        var client = new LineClient(socketPath);
        if (hello)
        {
            client.Call("hello", new JsonObject { ["protocol"] = "1.0", ["client"] = "xunit" });
        }
        return client;
    }

    public void SendLine(string line) => SendBytes(Encoding.UTF8.GetBytes(line + "\n"));

    public void SendBytes(byte[] bytes) => _stream.Write(bytes);

    public JsonObject? ReadMessage()
    {
        var line = _reader.ReadLine();
        return line is null ? null : JsonNode.Parse(line)!.AsObject();
    }

    /// <summary>Sends a request and returns the reply, collecting log notifications on the way.</summary>
    public JsonObject Request(string method, JsonNode? parameters)
    {
        int id = ++_nextId;
        var request = new JsonObject { ["jsonrpc"] = "2.0", ["id"] = id, ["method"] = method };
        if (parameters is not null)
        {
            request["params"] = parameters;
        }
        SendLine(request.ToJsonString());
        while (true)
        {
            var message = ReadMessage() ?? throw new IOException($"connection closed while waiting for {method}");
            if (message["id"] is null && message["method"]?.GetValue<string>() == "log")
            {
                Notifications.Add(message);
                continue;
            }
            return message;
        }
    }

    /// <summary>The result of a call that must succeed.</summary>
    public JsonNode? Call(string method, JsonNode? parameters)
    {
        var reply = Request(method, parameters);
        if (reply["error"] is JsonNode error)
        {
            throw new RpcErrorException(error["code"]!.GetValue<int>(), error["message"]!.GetValue<string>());
        }
        return reply["result"];
    }

    /// <summary>The error of a call that must fail.</summary>
    public RpcErrorException Fail(string method, JsonNode? parameters)
    {
        var reply = Request(method, parameters);
        var error = reply["error"] ?? throw new InvalidOperationException($"{method} succeeded: {reply.ToJsonString()}");
        return new RpcErrorException(error["code"]!.GetValue<int>(), error["message"]!.GetValue<string>());
    }

    public void Dispose()
    {
        _reader.Dispose();
        _stream.Dispose();
    }
}

public sealed class RpcErrorException(int code, string message) : Exception(message)
{
    public int Code { get; } = code;
}

public static class Json
{
    public static JsonObject Params(StorageBuilder storage, params (string Key, JsonNode? Value)[] extra)
    {
        var o = new JsonObject { ["storeid"] = storage.StoreId, ["scfg"] = storage.Scfg };
        foreach (var (key, value) in extra)
        {
            o[key] = value;
        }
        return o;
    }

    public static JsonObject Params(params (string Key, JsonNode? Value)[] pairs)
    {
        var o = new JsonObject();
        foreach (var (key, value) in pairs)
        {
            o[key] = value;
        }
        return o;
    }

    public static string Canonical(JsonNode? node) => node?.ToJsonString(new JsonSerializerOptions { WriteIndented = false }) ?? "null";
}
