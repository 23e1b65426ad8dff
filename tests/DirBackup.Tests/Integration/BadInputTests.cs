using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using DirBackup.Errors;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Integration;

/// <summary>Every kind of bad input gets one clear line back, and nothing on disk changes.</summary>
[Collection(PathSocketCollection.Name)]
public sealed class BadInputTests(PathSocketDaemon daemon)
{
    private void StillServes()
    {
        using var client = daemon.Connect();
        Assert.NotNull(client.Call("status", Json.Params(daemon.NewStorage())));
    }

    [Fact]
    public void A_line_that_is_not_json_gets_a_parse_error_and_the_connection_closes()
    {
        using var client = daemon.Connect();
        client.SendLine("this is not json");
        var reply = client.ReadMessage()!;
        Assert.Equal((int)ErrorCode.ParseError, reply["error"]!["code"]!.GetValue<int>());
        Assert.Equal("request is not valid JSON-RPC over UTF-8 JSON; closing the connection", reply["error"]!["message"]!.GetValue<string>());
        Assert.Null(client.ReadMessage());
        StillServes();
    }

    [Fact]
    public void An_unknown_method_is_method_not_found()
    {
        using var client = daemon.Connect();
        var e = client.Fail("format_disk", Json.Params(("volname", "x")));
        Assert.Equal((int)ErrorCode.MethodNotFound, e.Code);
        Assert.Contains("format_disk", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{\"storeid\":\"t\",\"scfg\":{\"path\":\"/tmp\"},\"vmid\":\"abc\"}", "list_volumes: parameter 'vmid' must be an integer or null, not a string")]
    [InlineData("{\"storeid\":\"t\",\"scfg\":{\"path\":\"/tmp\"},\"vmid\":[100]}", "list_volumes: parameter 'vmid' must be an integer or null, not an array")]
    [InlineData("{\"storeid\":7,\"scfg\":{\"path\":\"/tmp\"}}", "list_volumes: parameter 'storeid' must be a string, not a number")]
    [InlineData("{\"storeid\":\"t\",\"scfg\":\"/tmp\"}", "list_volumes: parameter 'scfg' must be an object, not a string")]
    [InlineData("{\"storeid\":\"t\"}", "list_volumes: missing parameter 'scfg'")]
    [InlineData("{\"storeid\":\"t\",\"scfg\":{\"path\":\"/tmp\"},\"rm\":\"-rf\"}", "list_volumes: unknown parameter 'rm'")]
    [InlineData("[{\"storeid\":\"t\",\"scfg\":{\"path\":\"/tmp\"}}]", "list_volumes: params must be one object of named parameters")]
    [InlineData("{\"storeid\":\"t\",\"scfg\":{\"path\":\"relative/dir\"}}", "storage path 'relative/dir' is not an absolute path")]
    [InlineData("{\"storeid\":\"t\",\"scfg\":{\"path\":\"/srv/../etc\"}}", "storage path '/srv/../etc' contains '.' or '..'")]
    [InlineData("{\"storeid\":\"t\",\"scfg\":{}}", "storage configuration has no 'path'")]
    public void Wrong_parameters_are_named_in_one_line(string parameters, string message)
    {
        using var client = daemon.Connect();
        var e = client.Fail("list_volumes", JsonNode.Parse(parameters));
        Assert.Equal((int)ErrorCode.InvalidParams, e.Code);
        Assert.Equal(message, e.Message);
    }

    [Fact]
    public void Positional_parameters_are_refused()
    {
        using var client = daemon.Connect();
        var e = client.Fail("list_volumes", JsonNode.Parse("[\"t\", {\"path\": \"/tmp\"}]"));
        Assert.Equal((int)ErrorCode.InvalidParams, e.Code);
        Assert.Contains("list_volumes", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("backup/../etc")]
    [InlineData("/backup/100/qemu-1700000000")]
    [InlineData("backup/100/foo-1700000000")]
    [InlineData("backup/abc/qemu-1700000000")]
    [InlineData("backup/100/qemu-1700000000\u0001")]
    public void Bad_volume_names_change_nothing(string volname)
    {
        var storage = daemon.NewStorage();
        storage.AddVm(100, 1700000000);
        var before = storage.Snapshot();
        using var client = daemon.Connect();
        foreach (var method in new[] { "free_image", "volume_size_info", "path" })
        {
            var e = client.Fail(method, Json.Params(storage, ("volname", volname)));
            Assert.Equal((int)ErrorCode.InvalidVolumeName, e.Code);
            Assert.DoesNotContain('\n', e.Message);
        }
        var longName = client.Fail("free_image", Json.Params(storage, ("volname", "backup/100/qemu-" + new string('1', 300))));
        Assert.Equal("invalid volume name: longer than 128 characters", longName.Message);
        Assert.Equal(before, storage.Snapshot());
    }

    [Fact]
    public void A_line_over_the_size_bound_is_refused_and_the_connection_closed()
    {
        using var client = daemon.Connect();
        var huge = new StringBuilder("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"parse_volname\",\"params\":{\"volname\":\"");
        huge.Append('x', 17 * 1024 * 1024).Append("\"}}");
        try
        {
            client.SendLine(huge.ToString());
        }
        catch (IOException)
        {
            // The daemon may close before the last bytes are written; its reply is still readable.
        }
        var reply = client.ReadMessage()!;
        Assert.Equal((int)ErrorCode.InvalidRequest, reply["error"]!["code"]!.GetValue<int>());
        Assert.Contains("exceeds 16777216 bytes", reply["error"]!["message"]!.GetValue<string>(), StringComparison.Ordinal);
        StillServes();
    }

    [Fact]
    public void Calls_before_hello_are_refused()
    {
        using var client = daemon.Connect(hello: false);
        var e = client.Fail("list_volumes", Json.Params(daemon.NewStorage()));
        Assert.Equal((int)ErrorCode.HelloRequired, e.Code);
    }

    [Fact]
    public void A_client_of_another_major_protocol_is_told_what_to_upgrade()
    {
        using var client = daemon.Connect(hello: false);
        var e = client.Fail("hello", Json.Params(("protocol", "2.0"), ("client", "future shim")));
        Assert.Equal((int)ErrorCode.IncompatibleProtocol, e.Code);
        Assert.Contains("apt install pve-dirbackup", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Notes_with_invalid_utf8_on_the_wire_are_refused_and_change_nothing()
    {
        var storage = daemon.NewStorage();
        var backup = storage.AddVm(100, 1700000000, notes: "keep");
        var before = storage.Snapshot();
        using var client = daemon.Connect();
        var prefix = "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"update_volume_attribute\",\"params\":{\"storeid\":\"test\",\"scfg\":{\"path\":\"" + storage.Root
            + "\"},\"volname\":\"" + backup.VolName + "\",\"attribute\":\"notes\",\"value\":\"bad ";
        client.SendBytes([.. Encoding.UTF8.GetBytes(prefix), 0xC3, 0x28, 0xFF, .. "\"}}\n"u8.ToArray()]);
        var reply = client.ReadMessage()!;
        Assert.Equal((int)ErrorCode.InvalidValue, reply["error"]!["code"]!.GetValue<int>());
        Assert.Equal("notes are not valid UTF-8 text", reply["error"]!["message"]!.GetValue<string>());
        Assert.Equal(before, storage.Snapshot());
    }

    [Fact]
    public void Notes_over_the_size_bound_are_refused_on_the_wire()
    {
        var storage = daemon.NewStorage();
        var backup = storage.AddVm(100, 1700000000);
        var before = storage.Snapshot();
        using var client = daemon.Connect();
        var e = client.Fail("update_volume_attribute", Json.Params(storage, ("volname", backup.VolName), ("attribute", "notes"), ("value", new string('a', 70000))));
        Assert.Equal((int)ErrorCode.InvalidValue, e.Code);
        Assert.Equal(before, storage.Snapshot());
    }

    [Fact]
    public async Task A_peer_that_is_not_root_is_refused_and_logged()
    {
        // setpriv drops to nobody but keeps CAP_DAC_OVERRIDE, so the 0600 socket can be opened and the
        // daemon's own SO_PEERCRED check is what refuses the caller.
        var script = "use IO::Socket::UNIX; my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die \"connect: $!\\n\"; "
            + "print $s qq({\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"hello\",\"params\":{\"protocol\":\"1.0\",\"client\":\"nobody\"}}\\n); print scalar(<$s>) // \"EOF\\n\";";
        var psi = new ProcessStartInfo("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_override", "--ambient-caps=+dac_override", "perl", "-e", script, daemon.SocketPath])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(psi)!;
        var output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
        process.WaitForExit();

        Assert.Contains("\"code\":1003", output, StringComparison.Ordinal);
        Assert.Contains("dirbackupd accepts connections from root only, not uid 65534", output, StringComparison.Ordinal);
        await daemon.Daemon.WaitForOutputAsync("refused a connection from uid 65534");
    }

    [Fact]
    public async Task A_client_that_disconnects_mid_call_cancels_it_and_nothing_changes()
    {
        var storage = daemon.NewStorage();
        var backup = storage.AddVm(100, 1700000000);
        var before = storage.Snapshot();
        // Hold the guest lock so free_image waits inside the daemon; the client then goes away.
        var store = new BackupStore(new StorageConfig("test", storage.Root), new StoreSettings());
        var guestLock = await store.LockGuestAsync(100, default);
        var client = daemon.Connect();
        client.SendLine(new JsonObject { ["jsonrpc"] = "2.0", ["id"] = 5, ["method"] = "free_image", ["params"] = Json.Params(storage, ("volname", backup.VolName)) }.ToJsonString());
        await Task.Delay(300);
        client.Dispose();
        await daemon.Daemon.WaitForOutputAsync("free_image from pid");
        guestLock.Dispose();
        await Task.Delay(500);

        Assert.Contains($"free_image from pid {Environment.ProcessId} cancelled: the client went away", daemon.Daemon.Output, StringComparison.Ordinal);
        Assert.Equal(before, storage.Snapshot());
    }
}
