using System.Text.Json.Nodes;
using DirBackup.Errors;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Integration;

/// <summary>
/// The storage methods over a real socket against a running daemon. The variants below only say how the
/// daemon got its socket; every scenario runs against each.
/// </summary>
public abstract class StorageMethodsScenario(DaemonFixture daemon)
{
    protected DaemonFixture Daemon => daemon;

    [Fact]
    public void Hello_answers_the_protocol_and_daemon_versions()
    {
        using var client = daemon.Connect(hello: false);
        var result = client.Call("hello", Json.Params(("protocol", "1.0"), ("client", "xunit")))!;
        Assert.Equal("1.0", result["protocol"]!.GetValue<string>());
        Assert.StartsWith("dirbackupd ", result["daemon"]!.GetValue<string>(), StringComparison.Ordinal);
    }

    [Fact]
    public void List_volumes_returns_every_backup_with_pve_keys_and_filters_by_guest_and_content()
    {
        var storage = daemon.NewStorage();
        storage.AddVm(100, 1700000000, notes: "before upgrade");
        storage.AddVm(100, 1700000100, parent: "1700000000", isProtected: true);
        storage.AddContainer(101, 1700000200);
        using var client = daemon.Connect();

        var all = client.Call("list_volumes", Json.Params(storage))!.AsArray();
        Assert.Equal(["test:backup/100/qemu-1700000000", "test:backup/100/qemu-1700000100", "test:backup/101/lxc-1700000200"],
            all.Select(v => v!["volid"]!.GetValue<string>()));
        var protectedChild = all[1]!.AsObject();
        Assert.Equal("backup", protectedChild["content"]!.GetValue<string>());
        Assert.Equal("dirbackup", protectedChild["format"]!.GetValue<string>());
        Assert.Equal("qemu", protectedChild["subtype"]!.GetValue<string>());
        Assert.Equal(1700000100, protectedChild["ctime"]!.GetValue<long>());
        Assert.Equal(100, protectedChild["vmid"]!.GetValue<int>());
        Assert.Equal(storage.Backups[1].Manifest.Size, protectedChild["size"]!.GetValue<long>());
        Assert.True(protectedChild["protected"]!.GetValue<bool>());
        Assert.Equal("test:backup/100/qemu-1700000000", protectedChild["parent"]!.GetValue<string>());
        Assert.Equal("before upgrade", all[0]!["notes"]!.GetValue<string>());

        var lxcOnly = client.Call("list_volumes", Json.Params(storage, ("vmid", 101)))!.AsArray();
        Assert.Equal("lxc", Assert.Single(lxcOnly)!["subtype"]!.GetValue<string>());
        Assert.Empty(client.Call("list_volumes", Json.Params(storage, ("content-types", new JsonArray("images", "rootdir"))))!.AsArray());
        Assert.Equal(3, client.Call("list_volumes", Json.Params(storage, ("content-types", new JsonArray("backup"))))!.AsArray().Count);
    }

    [Fact]
    public void A_damaged_manifest_is_skipped_and_reported_to_the_task_log()
    {
        var storage = daemon.NewStorage();
        storage.AddVm(100, 1700000000);
        var broken = storage.AddVm(100, 1700000100);
        File.WriteAllText(Path.Combine(broken.Directory, "manifest.json"), "{ truncated");
        using var client = daemon.Connect();

        var list = client.Call("list_volumes", Json.Params(storage))!.AsArray();

        Assert.Single(list);
        var log = Assert.Single(client.Notifications);
        Assert.Equal("warn", log["params"]!["level"]!.GetValue<string>());
        Assert.Contains("qemu-1700000100", log["params"]!["message"]!.GetValue<string>(), StringComparison.Ordinal);
    }

    [Fact]
    public void Status_reports_the_filesystem_and_inactive_when_the_path_is_gone()
    {
        var storage = daemon.NewStorage();
        using var client = daemon.Connect();
        var status = client.Call("status", Json.Params(storage))!;
        Assert.True(status["active"]!.GetValue<bool>());
        Assert.True(status["total"]!.GetValue<long>() > 0);
        Assert.InRange(status["avail"]!.GetValue<long>(), 1, status["total"]!.GetValue<long>());

        var gone = new JsonObject { ["storeid"] = "gone", ["scfg"] = new JsonObject { ["path"] = storage.Root + "/not-mounted" } };
        var inactive = client.Call("status", gone)!;
        Assert.False(inactive["active"]!.GetValue<bool>());
    }

    [Fact]
    public void Activate_storage_names_a_missing_path()
    {
        var storage = daemon.NewStorage();
        using var client = daemon.Connect();
        client.Call("activate_storage", Json.Params(storage));
        var e = client.Fail("activate_storage", new JsonObject { ["storeid"] = "x", ["scfg"] = new JsonObject { ["path"] = storage.Root + "/missing" } });
        Assert.Equal((int)ErrorCode.StorageUnavailable, e.Code);
        Assert.Equal($"storage path '{storage.Root}/missing' does not exist (is the backup filesystem mounted?)", e.Message);
    }

    [Fact]
    public void Parse_volname_path_and_size_describe_a_backup()
    {
        var storage = daemon.NewStorage();
        var backup = storage.AddVm(100, 1700000000);
        using var client = daemon.Connect();

        var parsed = client.Call("parse_volname", Json.Params(("volname", backup.VolName)))!;
        Assert.Equal(("backup", "100/qemu-1700000000", 100), (parsed["vtype"]!.GetValue<string>(), parsed["name"]!.GetValue<string>(), parsed["vmid"]!.GetValue<int>()));
        var path = client.Call("path", Json.Params(storage, ("volname", backup.VolName)))!;
        Assert.Equal(backup.Directory, path["path"]!.GetValue<string>());
        var size = client.Call("volume_size_info", Json.Params(storage, ("volname", backup.VolName)))!;
        Assert.Equal(backup.Manifest.Size, size["size"]!.GetValue<long>());
        Assert.Equal(1700000000, size["ctime"]!.GetValue<long>());
        Assert.Equal((int)ErrorCode.NotFound, client.Fail("volume_size_info", Json.Params(storage, ("volname", "backup/100/qemu-1"))).Code);
    }

    [Fact]
    public void Notes_and_protected_are_read_and_written_through_the_daemon()
    {
        var storage = daemon.NewStorage();
        var backup = storage.AddVm(100, 1700000000);
        using var client = daemon.Connect();
        JsonObject Attr(string name, JsonNode? value = null, bool write = false)
        {
            var p = Json.Params(storage, ("volname", backup.VolName), ("attribute", name));
            if (write)
            {
                p["value"] = value;
            }
            return p;
        }

        Assert.Null(client.Call("get_volume_attribute", Attr("notes")));
        client.Call("update_volume_attribute", Attr("notes", "Vor dem Update \u2713", write: true));
        Assert.Equal("Vor dem Update \u2713", client.Call("get_volume_attribute", Attr("notes"))!.GetValue<string>());
        client.Call("update_volume_attribute", Attr("protected", 1, write: true));
        Assert.True(client.Call("get_volume_attribute", Attr("protected"))!.GetValue<bool>());
        Assert.Null(client.Call("get_volume_attribute", Attr("colour")));
        var e = client.Fail("update_volume_attribute", Attr("colour", "red", write: true));
        Assert.Equal((int)ErrorCode.UnsupportedAttribute, e.Code);
        Assert.Equal("attribute 'colour' is not supported for storage type 'dirbackup'", e.Message);
    }

    [Fact]
    public void Free_image_deletes_leaves_and_refuses_protected_backups_and_bases_it_cannot_merge()
    {
        var storage = daemon.NewStorage();
        var base_ = storage.AddVm(100, 1700000000);
        var leaf = storage.AddVm(100, 1700000100, parent: "1700000000");
        var kept = storage.AddVm(102, 1700000300, isProtected: true);
        using var client = daemon.Connect();
        var before = storage.Snapshot();

        Assert.Equal((int)ErrorCode.Protected, client.Fail("free_image", Json.Params(storage, ("volname", kept.VolName))).Code);
        // The prepared images are not qcow2, so the base cannot be merged into the leaf.
        Assert.Equal((int)ErrorCode.IoError, client.Fail("free_image", Json.Params(storage, ("volname", base_.VolName))).Code);
        Assert.Equal(before, storage.Snapshot());

        Assert.Null(client.Call("free_image", Json.Params(storage, ("volname", leaf.VolName))));
        Assert.False(Directory.Exists(leaf.Directory));
        client.Call("free_image", Json.Params(storage, ("volname", base_.VolName)));
        Assert.Equal([kept.VolName], client.Call("list_volumes", Json.Params(storage))!.AsArray().Select(v => v!["volid"]!.GetValue<string>()["test:".Length..]));
    }

    [Fact]
    public void Guest_and_firewall_configs_come_back_byte_for_byte()
    {
        var storage = daemon.NewStorage();
        var vm = storage.AddVm(100, 1700000000);
        var ct = storage.AddContainer(101, 1700000100);
        using var client = daemon.Connect();

        var config = Convert.FromBase64String(client.Call("archive_get_guest_config", Json.Params(storage, ("volname", vm.VolName)))!.GetValue<string>());
        Assert.Equal(vm.GuestConfig, config);
        Assert.Null(client.Call("archive_get_firewall_config", Json.Params(storage, ("volname", vm.VolName))));
        var firewall = client.Call("archive_get_firewall_config", Json.Params(storage, ("volname", ct.VolName)))!.GetValue<string>();
        Assert.Equal("[OPTIONS]\nenable: 1\n", System.Text.Encoding.UTF8.GetString(Convert.FromBase64String(firewall)));
        var mechanism = client.Call("restore_get_mechanism", Json.Params(storage, ("volname", ct.VolName)))!;
        Assert.Equal(("tar", "lxc"), (mechanism["mechanism"]!.GetValue<string>(), mechanism["vmtype"]!.GetValue<string>()));
    }

    [Fact]
    public void Image_methods_are_refused_or_ignored_as_a_backup_storage_must()
    {
        var storage = daemon.NewStorage();
        var vm = storage.AddVm(100, 1700000000);
        using var client = daemon.Connect();

        var e = client.Fail("alloc_image", Json.Params(storage, ("vmid", 100), ("fmt", "raw"), ("name", null), ("size", 1024)));
        Assert.Equal((int)ErrorCode.NotSupported, e.Code);
        Assert.Contains("holds backups only", e.Message, StringComparison.Ordinal);
        Assert.Equal((int)ErrorCode.NotSupported, client.Fail("volume_snapshot", Json.Params(storage, ("volname", vm.VolName), ("snap", "s1"))).Code);
        Assert.Null(client.Call("activate_volume", Json.Params(storage, ("volname", vm.VolName))));
        Assert.False(client.Call("volume_has_feature", Json.Params(storage, ("feature", "clone"), ("volname", vm.VolName)))!.GetValue<bool>());
        Assert.Empty(client.Call("list_images", Json.Params(storage))!.AsArray());
        Assert.Empty(client.Call("volume_export_formats", Json.Params(storage, ("volname", vm.VolName)))!.AsArray());
    }

    [Fact]
    public void Config_hooks_accept_what_pve_passes_and_check_the_path()
    {
        var storage = daemon.NewStorage();
        using var client = daemon.Connect();
        Assert.Null(client.Call("on_add_hook", Json.Params(storage)));
        Assert.Null(client.Call("on_update_hook", Json.Params(("storeid", "test"), ("scfg", new JsonObject { ["nodes"] = "pve1" }))));
        Assert.Null(client.Call("on_update_hook_full", Json.Params(storage, ("update", new JsonObject { ["nodes"] = "pve1" }), ("delete", new JsonArray()))));
        var e = client.Fail("on_add_hook", Json.Params(("storeid", "x"), ("scfg", new JsonObject { ["path"] = "backups" })));
        Assert.Equal("storage path 'backups' is not an absolute path", e.Message);
    }

    [Fact]
    public async Task Prune_applies_retention_merges_removed_bases_into_kept_backups_and_keeps_protected_ones()
    {
        var storage = daemon.NewStorage();
        var base_ = await storage.AddVmWithImageAsync(100, 1700000000, writes: "write -P 1 0 1M");
        var kept = await storage.AddVmWithImageAsync(100, 1700086400, "1700000000", "write -P 2 512K 1M");
        var protectedOld = storage.AddVm(101, 1600000000, isProtected: true);
        var oldFull = storage.AddVm(101, 1700000000);
        var newFull = storage.AddVm(101, 1700086400);
        using var client = daemon.Connect();
        JsonObject Prune(bool dryRun) => Json.Params(storage, ("keep", new JsonObject { ["keep-last"] = 1 }), ("dryrun", dryRun));
        var keptImage = Path.Combine(kept.Directory, "drive-scsi0.qcow2");
        using var scratch = new TempDir();
        var expected = scratch.Combine("expected.raw");
        await SourceDisk.Run("qemu-img", "convert", "-O", "raw", keptImage, expected);

        var before = storage.Snapshot();
        var dry = client.Call("prune_backups", Prune(true))!.AsArray();
        Assert.Equal(before, storage.Snapshot());
        string MarkOf(JsonArray list, string volname) => list.Single(e => e!["volid"]!.GetValue<string>() == "test:" + volname)!["mark"]!.GetValue<string>();
        Assert.Equal("keep", MarkOf(dry, kept.VolName));
        Assert.Equal("remove", MarkOf(dry, base_.VolName));
        Assert.Equal("protected", MarkOf(dry, protectedOld.VolName));
        Assert.Equal("remove", MarkOf(dry, oldFull.VolName));
        Assert.Equal("keep", MarkOf(dry, newFull.VolName));

        client.Call("prune_backups", Prune(false));
        Assert.False(Directory.Exists(oldFull.Directory));
        Assert.False(Directory.Exists(base_.Directory));
        var listed = client.Call("list_volumes", Json.Params(storage))!.AsArray();
        Assert.Equal(3, listed.Count);
        Assert.Null(listed.Single(v => v!["volid"]!.GetValue<string>() == "test:" + kept.VolName)!["parent"]);
        Assert.Contains(client.Notifications, n => n["params"]!["message"]!.GetValue<string>() == $"removing backup 'test:{base_.VolName}'");
        Assert.Contains(client.Notifications, n => n["params"]!["message"]!.GetValue<string>() == $"merging 'test:{base_.VolName}' into 'test:{kept.VolName}' (drive-scsi0)");
        await SourceDisk.Run("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", expected, keptImage);
    }
}

[Collection(PathSocketCollection.Name)]
public sealed class StorageMethodsOverOwnSocket(PathSocketDaemon daemon) : StorageMethodsScenario(daemon);

[Collection(ActivatedSocketCollection.Name)]
public sealed class StorageMethodsOverSystemdSocket(ActivatedSocketDaemon daemon) : StorageMethodsScenario(daemon)
{
    [Fact]
    public async Task The_daemon_serves_the_socket_systemd_handed_over()
    {
        await Daemon.Daemon.WaitForOutputAsync("listening on a socket handed over by systemd");
    }
}
