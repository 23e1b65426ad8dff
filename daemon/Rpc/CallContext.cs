using Microsoft.Extensions.Logging;

namespace DirBackup.Rpc;

/// <summary>What a handler knows about the call it serves: who asked, when to stop, and the way back to the task log.</summary>
public sealed class CallContext(Connection connection, string method, CancellationToken cancellationToken)
{
    public Connection Connection => connection;
    public string Method => method;
    public PeerCredentials Peer => connection.Peer;
    public CancellationToken CancellationToken => cancellationToken;
    public ILogger Logger => connection.Logger;

    /// <summary>A line for the PVE task log (level info, warn or err), sent while the call is in flight.</summary>
    public Task LogAsync(string level, string message) => connection.NotifyLogAsync(level, message);

    public Task InfoAsync(string message) => LogAsync("info", message);
    public Task WarnAsync(string message) => LogAsync("warn", message);
}
