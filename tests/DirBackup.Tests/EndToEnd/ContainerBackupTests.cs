using System.Text.Json.Nodes;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.EndToEnd;

/// <summary>
/// Container backups through the Perl shim as vzdump makes them: the tree mounted in a private mount namespace
/// at a path the host does not have, prepare as root, the archive call from an unprivileged child in a user
/// namespace mapped 0:100000:65536. The archive must hold container-relative owners, leave out the excluded
/// paths, pass PVE's check of an untrusted archive and restore, inside a user namespace, to the same tree.
/// </summary>
[Collection(PathSocketCollection.Name)]
[Trait("speed", "slow")]
public sealed class ContainerBackupTests(PathSocketDaemon daemon)
{
    private static readonly string[] Excludes = ["/tmp/?*", "*.log", "my file*", "/home/user/cache/**", "it's*", "[ab].txt", "q?"];

    private static readonly string[] Excluded =
    [
        "tmp/junk", "var/log/syslog.log", "home/user/my file.bak", "home/user/cache/deep", "home/user/cache/deep/blob",
        "home/user/it's here", "home/user/a.txt", "home/user/q1", "lost+found",
    ];

    private async Task<(StorageBuilder Storage, string Tree)> TreeAsync()
    {
        var storage = daemon.NewStorage("ct");
        var tree = Path.Combine(storage.Root + "-ct", "tree");
        await ContainerTree.CreateAsync(tree);
        // Container root (host uid 100000) must be able to walk to its tree, as it can to /mnt/vzsnap0 on a node.
        await ContainerTree.RunAsync("chmod", ["o+x", Path.GetDirectoryName(storage.Root)!, storage.Root + "-ct"]);
        // A capability set inside the container is namespaced (v3, root id 100000), as on a real container.
        await ContainerTree.RunInUserNamespaceAsync(["setcap", "cap_net_raw+ep", Path.Combine(tree, "sbin", "init")]);
        return (storage, tree);
    }

    /// <summary>tar -tv lines by member name: mode and owner as the archive records them.</summary>
    private static async Task<Dictionary<string, string>> ListAsync(string archive)
    {
        var listing = await ContainerTree.RunAsync("tar", ["-tvf", archive, "--numeric-owner"]);
        var members = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in listing.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var fields = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            var name = fields[5][(fields[5].IndexOf("./", StringComparison.Ordinal))..];
            name = name.Split(" -> ")[0].Split(" link to ")[0];
            members[name.TrimEnd('/')] = $"{fields[0]} {fields[1]}";
        }
        return members;
    }

    [Fact]
    public async Task The_archive_holds_container_owners_leaves_out_exclusions_and_restores_the_same_tree()
    {
        var (storage, tree) = await TreeAsync();
        byte[] firewall = [.. "[OPTIONS]\nenable: 1\n"u8.ToArray(), 0xC3, 0xA9, 0xFF];
        var firewallFile = Path.Combine(storage.Root + "-ct", "200.fw");
        await File.WriteAllBytesAsync(firewallFile, firewall);
        var run = await VzdumpVm.ContainerAsync(daemon.SocketPath, storage, 200, tree, 1700000000, Excludes, ["--firewall", firewallFile]);
        Assert.True(run.ExitCode == 0, run.Output.ToJsonString() + run.Log);
        Assert.Equal("200/lxc-1700000000", run.Output["archive"]!.GetValue<string>());

        using var client = daemon.Connect();
        var volname = "backup/200/lxc-1700000000";
        Assert.Equal(firewall, Convert.FromBase64String(client.Call("archive_get_firewall_config", Json.Params(storage, ("volname", volname)))!.GetValue<string>()));
        var config = System.Text.Encoding.UTF8.GetString(Convert.FromBase64String(client.Call("archive_get_guest_config", Json.Params(storage, ("volname", volname)))!.GetValue<string>()));
        Assert.Contains("unprivileged: 1", config, StringComparison.Ordinal);
        var mechanism = client.Call("restore_get_mechanism", Json.Params(storage, ("volname", volname)))!;
        Assert.Equal(("tar", "lxc"), (mechanism["mechanism"]!.GetValue<string>(), mechanism["vmtype"]!.GetValue<string>()));
        var archive = client.Call("restore_container_init", Json.Params(storage, ("volname", volname), ("info", new JsonObject())))!["tar-path"]!.GetValue<string>();
        Assert.EndsWith(".tar", archive, StringComparison.Ordinal);

        var members = await ListAsync(archive);
        Assert.Equal("-rw-r--r-- 1000/1000", members["./home/user/file"]);
        Assert.Equal("-rw-r--r-- 33/33", members["./var/www/index.html"]);
        Assert.Equal("-rwsr-xr-x 0/0", members["./bin/true"]);
        Assert.StartsWith("drwxr-xr-x 0/0", members["./sbin"], StringComparison.Ordinal);
        Assert.Contains("./tmp", members.Keys);
        Assert.Contains("./home/user/c.txt", members.Keys);
        foreach (var path in Excluded)
        {
            Assert.DoesNotContain("./" + path, members.Keys);
        }
        // pve-container's check_tar_archive: parseable members, no multi-volume member, a sbin entry, at least ten members.
        Assert.True(members.Count >= 10);
        Assert.DoesNotContain(members.Values, v => v.StartsWith('M'));

        // pve-container's extraction: tar inside the container's user namespace with its common flags.
        var restored = Path.Combine(storage.Root + "-ct", "restored");
        Directory.CreateDirectory(restored);
        await ContainerTree.RunAsync("chown", ["100000:100000", restored]);
        await ContainerTree.RunInUserNamespaceAsync(["tar", "xpf", archive, "--totals", "--sparse", "--numeric-owner", "--acls", "--xattrs",
            "--xattrs-include=user.*", "--xattrs-include=security.capability", "--warning=no-file-ignored", "--warning=no-xattr-write",
            "-C", restored, "--skip-old-files", "--anchored", "--exclude", "./dev/*"]);

        var expected = await ContainerTree.DescribeAsync(tree, 100000);
        foreach (var path in Excluded)
        {
            expected.Remove(path);
        }
        var actual = await ContainerTree.DescribeAsync(restored, 100000);
        var differences = expected.Keys.Union(actual.Keys)
            .Where(k => expected.GetValueOrDefault(k) != actual.GetValueOrDefault(k))
            .Select(k => $"{k}:\n  backed up {expected.GetValueOrDefault(k) ?? "(absent)"}\n  restored  {actual.GetValueOrDefault(k) ?? "(absent)"}")
            .ToList();
        Assert.True(differences.Count == 0, string.Join("\n", differences));

        client.Call("restore_container_cleanup", Json.Params(storage, ("volname", volname), ("info", new JsonObject())));
        client.Call("restore_container_cleanup", Json.Params(storage, ("volname", volname), ("info", new JsonObject())));
    }

    [Fact]
    public async Task A_squashfs_backup_restores_through_the_directory_mechanism()
    {
        var (storage, tree) = await TreeAsync();
        // With a bandwidth limit, which mksquashfs (writing its image itself) keeps by being paused and resumed.
        var run = await VzdumpVm.ContainerAsync(daemon.SocketPath, storage, 204, tree, 1700000000, Excludes, ["--format", "squashfs", "--bwlimit", (64 << 20).ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        Assert.True(run.ExitCode == 0, run.Output.ToJsonString() + run.Log);
        using var client = daemon.Connect();
        var volname = "backup/204/lxc-1700000000";
        var mechanism = client.Call("restore_get_mechanism", Json.Params(storage, ("volname", volname)))!;
        Assert.Equal("directory", mechanism["mechanism"]!.GetValue<string>());
        var directory = client.Call("restore_container_init", Json.Params(storage, ("volname", volname), ("info", new JsonObject())))!["archive-directory"]!.GetValue<string>();
        Assert.True(Directory.Exists(Path.Combine(directory, "sbin")));
        Assert.Equal((int)DirBackup.Errors.ErrorCode.Busy, client.Fail("free_image", Json.Params(storage, ("volname", volname))).Code);

        // pve-container: tar from the mounted tree as host root, piped into tar inside the container's user namespace.
        var stream = Path.Combine(storage.Root + "-ct", "copy.tar");
        await ContainerTree.RunAsync("tar", ["cpf", stream, "--sparse", "--numeric-owner", "--acls", "--xattrs", "--xattrs-include=user.*",
            "--xattrs-include=security.capability", "--warning=no-file-ignored", "--warning=no-xattr-write", $"--directory={directory}", "."]);
        var restored = Path.Combine(storage.Root + "-ct", "restored-dir");
        Directory.CreateDirectory(restored);
        await ContainerTree.RunAsync("chown", ["100000:100000", restored]);
        await ContainerTree.RunInUserNamespaceAsync(["tar", "xpf", stream, "--sparse", "--numeric-owner", "--acls", "--xattrs", "--xattrs-include=user.*",
            "--xattrs-include=security.capability", "-C", restored, "--skip-old-files", "--anchored", "--exclude", "./dev/*"]);
        var expected = await ContainerTree.DescribeAsync(tree, 100000, withAcls: false);
        foreach (var path in Excluded)
        {
            expected.Remove(path);
        }
        var actual = await ContainerTree.DescribeAsync(restored, 100000, withAcls: false);
        var differences = expected.Keys.Union(actual.Keys).Where(k => expected.GetValueOrDefault(k) != actual.GetValueOrDefault(k)).ToList();
        Assert.True(differences.Count == 0, string.Join("\n", differences.Select(k => $"{k}: {expected.GetValueOrDefault(k)} | {actual.GetValueOrDefault(k)}")));

        // A cleanup while something still uses the mount says so and keeps it; the next one finishes; a third is harmless.
        var cleanup = Json.Params(storage, ("volname", volname), ("info", new JsonObject()));
        using (File.OpenRead(Path.Combine(directory, "etc", "hostname")))
        {
            var busy = client.Fail("restore_container_cleanup", cleanup.DeepClone());
            Assert.Equal((int)DirBackup.Errors.ErrorCode.Busy, busy.Code);
            Assert.True(Directory.Exists(Path.Combine(directory, "sbin")));
        }
        client.Call("restore_container_cleanup", cleanup.DeepClone());
        Assert.False(Directory.Exists(directory));
        client.Call("restore_container_cleanup", cleanup.DeepClone());
        client.Call("free_image", Json.Params(storage, ("volname", volname)));
    }

    private async Task RefusedAsync(string[] extra, string expected)
    {
        var (storage, tree) = await TreeAsync();
        var run = await VzdumpVm.ContainerAsync(daemon.SocketPath, storage, 201, tree, 1700000000, Excludes, extra);
        Assert.Equal(1, run.ExitCode);
        Assert.Contains(expected, run.Output["error"]!.GetValue<string>(), StringComparison.Ordinal);
        using var client = daemon.Connect();
        Assert.Empty(client.Call("list_volumes", Json.Params(storage))!.AsArray());
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(storage.Root, "201"), ".staging-*"));
    }

    [Fact]
    public Task A_source_that_climbs_out_of_the_directory_is_refused() =>
        RefusedAsync(["--source", "../x"], "source '../x' is not a path inside the container's directory");

    [Fact]
    public Task A_caller_that_does_not_descend_from_the_preparing_process_is_refused() =>
        RefusedAsync(["--claim-pid", "1"], "process 1 is not a descendant of process");

    [Fact]
    public Task A_user_namespace_with_another_id_map_is_refused() =>
        RefusedAsync(["--map", "0:200000:65536"], "the caller's uid map (0:200000:65536) is not the container's (0:100000:65536)");

    [Fact]
    public async Task A_vzdump_killed_while_archiving_leaves_nothing_behind()
    {
        var (storage, tree) = await TreeAsync();
        await ContainerTree.RunAsync("sh", ["-c", $"head -c 32M /dev/urandom > '{tree}/big' && chown 100000:100000 '{tree}/big'"]);
        using (var vzdump = VzdumpVm.StartContainer(daemon.SocketPath, storage, 203, tree, 1700000000, ["--bwlimit", (4 << 20).ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            var archive = Path.Combine(storage.Root, "203", ".staging-lxc-1700000000", "archive.tar");
            var deadline = DateTime.UtcNow.AddSeconds(20);
            while (!File.Exists(archive) || new FileInfo(archive).Length < (4 << 20))
            {
                Assert.True(DateTime.UtcNow < deadline && !vzdump.HasExited, "the archive did not start: " + (vzdump.HasExited ? await vzdump.StandardOutput.ReadToEndAsync() + await vzdump.StandardError.ReadToEndAsync() : "still running"));
                await Task.Delay(50);
            }
            vzdump.Kill(entireProcessTree: true);
            await vzdump.WaitForExitAsync();
        }
        var until = DateTime.UtcNow.AddSeconds(10);
        while (Directory.EnumerateDirectories(Path.Combine(storage.Root, "203"), ".staging-*").Any() && DateTime.UtcNow < until)
        {
            await Task.Delay(50);
        }
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(storage.Root, "203"), ".staging-*"));
        using var client = daemon.Connect();
        Assert.Empty(client.Call("list_volumes", Json.Params(storage))!.AsArray());
        // The guest's backup lock went with the connection.
        client.Call("backup_init", Json.Params(storage, ("vmid", 203), ("vmtype", "lxc"), ("start-time", 1700000100)));
        client.Call("backup_cleanup", Json.Params(storage, ("vmid", 203), ("vmtype", "lxc"), ("success", false), ("info", new JsonObject())));
    }

    [Fact]
    public async Task A_tampered_archive_fails_pve_s_check_cleanly()
    {
        var (storage, tree) = await TreeAsync();
        var run = await VzdumpVm.ContainerAsync(daemon.SocketPath, storage, 202, tree, 1700000000, Excludes);
        Assert.True(run.ExitCode == 0, run.Log);
        using var client = daemon.Connect();
        var volname = "backup/202/lxc-1700000000";
        var archive = client.Call("restore_container_init", Json.Params(storage, ("volname", volname), ("info", new JsonObject())))!["tar-path"]!.GetValue<string>();
        await File.WriteAllBytesAsync(archive, System.Text.Encoding.ASCII.GetBytes(new string('x', 20000)));
        // pve-container lists the untrusted archive first; a tampered one fails that listing and nothing is extracted.
        await Assert.ThrowsAsync<InvalidOperationException>(() => ContainerTree.RunAsync("tar", ["-tvf", archive, "--numeric-owner"]));
        client.Call("restore_container_cleanup", Json.Params(storage, ("volname", volname), ("info", new JsonObject())));
        Assert.Single(client.Call("list_volumes", Json.Params(storage))!.AsArray());
    }
}
