using System.Diagnostics;
using System.Text.Json.Nodes;

namespace DirBackup.Tests.Infrastructure;

/// <summary>
/// A process of its own (perl) that makes calls on its own connection and then holds still until it is killed, as a
/// PVE task worker killed outright between a restore's init and its cleanup does: the daemon only sees its peer go.
/// </summary>
public sealed class CallerProcess : IDisposable
{
    private const string Script = """
        use strict; use warnings; use IO::Socket::UNIX;
        my $socket = IO::Socket::UNIX->new(Peer => shift @ARGV) or die "connect: $!\n";
        $| = 1;
        for my $request (@ARGV) {
            print $socket "$request\n";
            while (defined(my $line = <$socket>)) {
                if ($line =~ /"id"/) { print $line; last }
            }
        }
        print "held\n";
        sleep 600;
        """;

    private readonly Process _process;

    private CallerProcess(Process process, List<JsonObject> replies)
    {
        _process = process;
        Replies = replies;
    }

    public int Pid => _process.Id;
    public IReadOnlyList<JsonObject> Replies { get; }

    /// <summary>Makes <paramref name="calls"/> in order (hello first) and returns once all are answered.</summary>
    public static async Task<CallerProcess> StartAsync(string socketPath, params (string Method, JsonObject Params)[] calls)
    {
        var info = new ProcessStartInfo("perl") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { "-e", Script, socketPath })
        {
            info.ArgumentList.Add(arg);
        }
        int id = 0;
        foreach (var (method, parameters) in calls.Prepend(("hello", Json.Params(("protocol", "1.0"), ("client", "xunit")))))
        {
            info.ArgumentList.Add(new JsonObject { ["jsonrpc"] = "2.0", ["id"] = ++id, ["method"] = method, ["params"] = parameters.DeepClone() }.ToJsonString());
        }
        var process = Process.Start(info)!;
        var replies = new List<JsonObject>();
        var caller = new CallerProcess(process, replies);
        while (await process.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60)) is { } line && line != "held")
        {
            var reply = JsonNode.Parse(line)!.AsObject();
            if (reply["error"] is JsonNode error)
            {
                caller.Dispose();
                throw new RpcErrorException(error["code"]!.GetValue<int>(), error["message"]!.GetValue<string>());
            }
            replies.Add(reply);
        }
        if (replies.Count != id)
        {
            var stderr = await process.StandardError.ReadToEndAsync();
            caller.Dispose();
            throw new InvalidOperationException("the caller process ended early: " + stderr);
        }
        return caller;
    }

    /// <summary>SIGKILL: no cleanup call, no goodbye; the kernel closes its connection.</summary>
    public void Kill()
    {
        _process.Kill();
        _process.WaitForExit();
    }

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            Kill();
        }
        _process.Dispose();
    }
}
