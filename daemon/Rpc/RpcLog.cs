using Microsoft.Extensions.Logging;

namespace DirBackup.Rpc;

internal static partial class RpcLog
{
    [LoggerMessage(Level = LogLevel.Information, Message = "listening on {SocketPath} (protocol {Protocol})")]
    public static partial void Listening(ILogger logger, string socketPath, string protocol);

    [LoggerMessage(Level = LogLevel.Information, Message = "listening on a socket handed over by systemd (protocol {Protocol})")]
    public static partial void ListeningActivated(ILogger logger, string protocol);

    [LoggerMessage(Level = LogLevel.Warning, Message = "refused a connection from uid {Uid} (pid {Pid}): only root may use dirbackupd")]
    public static partial void PeerRefused(ILogger logger, int uid, int pid);

    [LoggerMessage(Level = LogLevel.Debug, Message = "connection from pid {Pid} opened")]
    public static partial void ConnectionOpened(ILogger logger, int pid);

    [LoggerMessage(Level = LogLevel.Debug, Message = "connection from pid {Pid} closed ({Reason})")]
    public static partial void ConnectionClosed(ILogger logger, int pid, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "connection from pid {Pid} dropped: {Reason}")]
    public static partial void ConnectionDropped(ILogger logger, int pid, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "{Method} from pid {Pid} done in {Milliseconds:0.0} ms")]
    public static partial void CallDone(ILogger logger, string method, int pid, double milliseconds);

    [LoggerMessage(Level = LogLevel.Information, Message = "{Method} from pid {Pid} failed: {Message}")]
    public static partial void CallFailed(ILogger logger, string method, int pid, string message);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Method} from pid {Pid} cancelled: the client went away")]
    public static partial void CallCancelled(ILogger logger, string method, int pid);

    [LoggerMessage(Level = LogLevel.Error, Message = "{Method} from pid {Pid} failed unexpectedly: {Error}")]
    public static partial void CallCrashed(ILogger logger, string method, int pid, string error);

    [LoggerMessage(Level = LogLevel.Debug, Message = "{Detail}")]
    public static partial void Detail(ILogger logger, string detail);

    [LoggerMessage(Level = LogLevel.Information, Message = "stopping: {Reason}")]
    public static partial void Stopping(ILogger logger, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "stopped")]
    public static partial void Stopped(ILogger logger);

    [LoggerMessage(Level = LogLevel.Warning, Message = "accept failed: {Error}")]
    public static partial void AcceptFailed(ILogger logger, string error);
}
