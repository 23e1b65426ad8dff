using DirBackup.Rpc;

namespace DirBackup.Api;

/// <summary>The handshake: the first call on every connection.</summary>
public sealed class SessionApi(string daemonVersion, string protocolVersion)
{
    [RpcMethod("hello")]
    private Task<object?> Hello(RpcArgs args, CallContext context)
    {
        context.Connection.CompleteHello(args.String("protocol"));
        return Task.FromResult<object?>(new Dictionary<string, string>
        {
            ["protocol"] = protocolVersion,
            ["daemon"] = $"dirbackupd {daemonVersion}",
        });
    }
}
