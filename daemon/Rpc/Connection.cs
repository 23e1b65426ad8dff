using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using DirBackup.Errors;
using DirBackup.Protocol;
using Microsoft.Extensions.Logging;
using StreamJsonRpc;

namespace DirBackup.Rpc;

/// <summary>
/// One client connection: one JsonRpc instance, newline-delimited, System.Text.Json. Calls before the hello
/// handshake are refused; calls in flight are cancelled when the connection closes.
/// </summary>
public sealed class Connection
{
    private readonly Socket _socket;
    private readonly MethodTable _methods;
    private readonly Catalog _catalog;
    private readonly ILogger _logger;
    private JsonRpc? _rpc;
    private volatile bool _helloDone;

    public Connection(Socket socket, PeerCredentials peer, MethodTable methods, Catalog catalog, ILogger logger)
    {
        _socket = socket;
        Peer = peer;
        _methods = methods;
        _catalog = catalog;
        _logger = logger;
    }

    public PeerCredentials Peer { get; }

    /// <summary>The daemon's own log (not the task log): for detail an administrator reads when something is slow or odd.</summary>
    public ILogger Logger => _logger;

    private readonly CancellationTokenSource _closed = new();

    /// <summary>Cancelled when the client goes away: state a vzdump process left behind is abandoned then.</summary>
    public CancellationToken Closed => _closed.Token;

    public static readonly JsonSerializerOptions WireOptions = new()
    {
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never,
    };

    public async Task RunAsync(CancellationToken stopping)
    {
        RpcLog.ConnectionOpened(_logger, Peer.Pid);
        var network = new NetworkStream(_socket, ownsSocket: false);
        var reader = new LineBoundedStream(network, _catalog.MaxRequestLineBytes);
        var formatter = new SystemTextJsonFormatter { JsonSerializerOptions = WireOptions };
        var handler = new NewLineDelimitedMessageHandler(network, reader, formatter) { NewLine = NewLineDelimitedMessageHandler.NewLineStyle.Lf };
        var rpc = new JsonRpc(handler) { CancelLocallyInvokedMethodsWhenConnectionIsClosed = true };
        _rpc = rpc;
        DisconnectedReason? reason = null;
        string? description = null;
        bool notJson = false;
        rpc.Disconnected += (_, e) =>
        {
            reason = e.Reason;
            description = e.Exception?.Message ?? e.Description;
            notJson = e.Exception is JsonException || e.Exception?.InnerException is JsonException;
        };
        foreach (var (name, method) in _methods.Handlers)
        {
            var endpoint = new Endpoint(this, _catalog.Methods[name], method);
            rpc.AddLocalRpcMethod(Endpoint.InvokeMethod, endpoint, new JsonRpcMethodAttribute(name) { UseSingleObjectParameterDeserialization = true });
        }
        rpc.StartListening();
        using (stopping.Register(rpc.Dispose))
        {
            try
            {
                await rpc.Completion.ConfigureAwait(false);
            }
            catch (Exception e)
            {
                description ??= e.Message;
            }
        }
        if (reader.Overflowed)
        {
            RpcLog.ConnectionDropped(_logger, Peer.Pid, $"request line over {reader.MaxLineBytes} bytes");
            TrySendError(ErrorCode.InvalidRequest, $"request refused: a line exceeds {reader.MaxLineBytes} bytes; closing the connection");
        }
        else if (notJson || reason == DisconnectedReason.ParseError)
        {
            RpcLog.ConnectionDropped(_logger, Peer.Pid, $"not JSON: {description}");
            TrySendError(ErrorCode.ParseError, "request is not valid JSON-RPC over UTF-8 JSON; closing the connection");
        }
        else
        {
            RpcLog.ConnectionClosed(_logger, Peer.Pid, reason?.ToString() ?? "closed");
        }
        rpc.Dispose();
        CloseSocket();
        await _closed.CancelAsync().ConfigureAwait(false);
    }

    /// <summary>Writes an error reply outside JsonRpc, for a connection JsonRpc has already given up on (or never took).</summary>
    public void TrySendError(ErrorCode code, string message)
    {
        var line = JsonSerializer.SerializeToUtf8Bytes(new
        {
            jsonrpc = "2.0",
            id = (object?)null,
            error = new { code = (int)code, message, data = new { name = code.Name() } },
        });
        try
        {
            _socket.Send([.. line, (byte)'\n'], SocketFlags.None);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
    }

    public void CloseSocket()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
        _socket.Dispose();
    }

    internal Task NotifyLogAsync(string level, string message) =>
        _rpc?.NotifyWithParameterObjectAsync("log", new LogNotification(level, DirBackupException.OneLine(message))) ?? Task.CompletedTask;

    internal void CompleteHello(string clientProtocol)
    {
        var parts = clientProtocol.Split('.');
        if (parts.Length < 2 || !int.TryParse(parts[0], out int major))
        {
            throw DirBackupException.InvalidParams($"hello: protocol '{clientProtocol}' is not a version like {_catalog.ProtocolVersion}");
        }
        if (major != _catalog.ProtocolMajor)
        {
            throw new DirBackupException(ErrorCode.IncompatibleProtocol,
                $"the PVE plugin speaks protocol {clientProtocol} but dirbackupd speaks {_catalog.ProtocolVersion}: install one pve-dirbackup version for both (apt install pve-dirbackup) and restart dirbackupd");
        }
        _helloDone = true;
    }

    private sealed record LogNotification(
        [property: System.Text.Json.Serialization.JsonPropertyName("level")] string Level,
        [property: System.Text.Json.Serialization.JsonPropertyName("message")] string Message);

    /// <summary>One catalogue method bound to this connection: validation, handshake check and error mapping in one place.</summary>
    private sealed class Endpoint(Connection connection, MethodSpec spec, RpcHandler handler)
    {
        public static readonly System.Reflection.MethodInfo InvokeMethod = typeof(Endpoint).GetMethod(nameof(InvokeAsync))!;

        public async Task<object?> InvokeAsync(JsonElement @params = default, CancellationToken cancellationToken = default)
        {
            var started = Stopwatch.GetTimestamp();
            var logger = connection._logger;
            int pid = connection.Peer.Pid;
            try
            {
                if (!connection._helloDone && spec.Name != "hello")
                {
                    throw new DirBackupException(ErrorCode.HelloRequired, $"{spec.Name} before hello: the first call on a connection must be hello");
                }
                var args = RpcArgs.Validate(spec, @params);
                var result = await handler(args, new CallContext(connection, spec.Name, cancellationToken)).ConfigureAwait(false);
                RpcLog.CallDone(logger, spec.Name, pid, Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                return result;
            }
            catch (DirBackupException e)
            {
                RpcLog.CallFailed(logger, spec.Name, pid, e.Message);
                throw ToRpc(e.Code, e.Message);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                RpcLog.CallCancelled(logger, spec.Name, pid);
                throw ToRpc(ErrorCode.Cancelled, $"{spec.Name} was cancelled");
            }
            catch (Exception e)
            {
                RpcLog.CallCrashed(logger, spec.Name, pid, e.ToString());
                throw ToRpc(ErrorCode.InternalError, $"{spec.Name} failed: {DirBackupException.OneLine(e.Message)}");
            }
        }

        private static LocalRpcException ToRpc(ErrorCode code, string message) =>
            new(DirBackupException.OneLine(message)) { ErrorCode = (int)code, ErrorData = new ErrorData(code.Name()) };
    }

    private sealed record ErrorData([property: System.Text.Json.Serialization.JsonPropertyName("name")] string Name);
}
