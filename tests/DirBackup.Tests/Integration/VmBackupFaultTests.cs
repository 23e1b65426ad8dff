using System.Text.Json.Nodes;
using DirBackup.Errors;
using DirBackup.Qemu;
using DirBackup.Restore;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Integration;

/// <summary>Every failure of a VM backup ends with a clear error, no half backup listed, and the incremental record as it was.</summary>
[Collection(PathSocketCollection.Name)]
[Trait("speed", "slow")]
public sealed class VmBackupFaultTests(PathSocketDaemon daemon)
{
    private const string Device = "drive-scsi0";
    private const long Size = 16L << 20;

    private sealed record Setup(StorageBuilder Storage, SourceDisk Disk, LineClient Client, string Record) : IDisposable
    {
        public void Dispose() => Client.Dispose();
    }

    /// <summary>A storage with one committed full backup of guest 100, so the record and listing have something to keep.</summary>
    private async Task<Setup> WithOneBackupAsync()
    {
        var storage = daemon.NewStorage("faults");
        var disk = await SourceDisk.CreateAsync(storage.Root + "-vm", Size, "snapshot-access:faults");
        await disk.WriteAsync("write -P 0x5a 0 4M");
        await using (var access = await disk.OpenBackupAccessAsync(Device))
        {
            var run = await VzdumpVm.RunAsync(daemon.SocketPath, storage, 100, Device, Size, access.SocketPath, disk.Bitmap, 1700000000);
            Assert.True(run.ExitCode == 0, run.Log);
        }
        await disk.CommitBitmapAsync();
        await disk.WriteAsync("write -P 0x6b 8M 1M");
        return new Setup(storage, disk, daemon.Connect(), await File.ReadAllTextAsync(Path.Combine(storage.Root, "100", "incremental.json")));
    }

    private static JsonObject Volumes(long size, string nbdPath, string mode = "reuse", string? bitmap = "snapshot-access:faults", string device = Device)
    {
        var v = new JsonObject { ["size"] = size, ["nbd-path"] = nbdPath, ["bitmap-mode"] = mode };
        if (bitmap is not null)
        {
            v["bitmap-name"] = bitmap;
        }
        return new JsonObject { [device] = v };
    }

    private static JsonObject BackupVm(StorageBuilder storage, JsonObject volumes, int vmid = 100) =>
        Json.Params(storage, ("vmid", vmid), ("guest-config", Convert.ToBase64String("memory: 512\n"u8.ToArray())), ("volumes", volumes), ("info", new JsonObject()));

    private static void Init(Setup s, long time = 1700000100, int vmid = 100) =>
        s.Client.Call("backup_init", Json.Params(s.Storage, ("vmid", vmid), ("vmtype", "qemu"), ("start-time", time)));

    /// <summary>After a failure: only the old backup is listed, no staging directory is left, the record is unchanged.</summary>
    private static void AssertNothingChanged(Setup s)
    {
        var list = s.Client.Call("list_volumes", Json.Params(s.Storage))!.AsArray();
        Assert.Equal(["faults:backup/100/qemu-1700000000"], list.Select(v => v!["volid"]!.GetValue<string>()));
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(s.Storage.Root, "100"), ".staging-*"));
        Assert.Equal(s.Record, File.ReadAllText(Path.Combine(s.Storage.Root, "100", "incremental.json")));
    }

    private static RpcErrorException FailAndCleanUp(Setup s, JsonObject volumes)
    {
        var e = s.Client.Fail("backup_vm", BackupVm(s.Storage, volumes));
        Assert.DoesNotContain('\n', e.Message);
        s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("success", false), ("info", new JsonObject { ["error"] = e.Message })));
        AssertNothingChanged(s);
        return e;
    }

    [Fact]
    public async Task A_missing_nbd_path_or_one_that_is_not_a_socket_is_refused()
    {
        using var s = await WithOneBackupAsync();
        Init(s);
        var missing = FailAndCleanUp(s, Volumes(Size, s.Storage.Root + "/no-such.sock"));
        Assert.Equal($"device 'drive-scsi0': nbd-path '{s.Storage.Root}/no-such.sock' does not exist", missing.Message);
        Init(s);
        var regular = FailAndCleanUp(s, Volumes(Size, Path.Combine(s.Storage.Root, "100", "incremental.json")));
        Assert.Contains("is not a Unix socket", regular.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_export_the_server_does_not_have_is_refused()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync("drive-virtio0");
        Init(s);
        var e = FailAndCleanUp(s, Volumes(Size, access.SocketPath));
        Assert.Contains("cannot connect to NBD export 'drive-scsi0'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_bitmap_the_server_does_not_export_is_refused()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        Init(s);
        var e = FailAndCleanUp(s, Volumes(Size, access.SocketPath, bitmap: "snapshot-access:other"));
        Assert.Contains("does not offer 'qemu:dirty-bitmap:snapshot-access:other'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_device_size_that_differs_from_the_export_is_refused()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        Init(s);
        var e = FailAndCleanUp(s, Volumes(Size * 2, access.SocketPath, mode: "new"));
        Assert.Contains($"PVE gave size {Size * 2}, but the NBD export has {Size} bytes", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_bitmap_relative_to_a_backup_of_another_disk_size_is_refused_with_the_reason()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        Init(s);
        var e = FailAndCleanUp(s, Volumes(Size * 2, access.SocketPath));
        Assert.Contains("QEMU's bitmap cannot be used: the disk was resized since qemu-", e.Message, StringComparison.Ordinal);
        Assert.Contains("the next backup of this guest will be full", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("drive/scsi0")]
    [InlineData("..")]
    [InlineData("../../etc/passwd")]
    [InlineData("drive scsi0")]
    [InlineData("drive-scsi0\n")]
    [InlineData("-rf")]
    public async Task Device_names_that_are_not_drive_ids_are_refused(string name)
    {
        using var s = await WithOneBackupAsync();
        Init(s);
        var e = FailAndCleanUp(s, Volumes(Size, "/dev/null", device: name));
        Assert.Contains("is not a QEMU drive id", e.Message, StringComparison.Ordinal);
        Init(s);
        // The good name comes first: a refused query starts no target for it either.
        var query = s.Client.Fail("backup_vm_query_incremental", Json.Params(s.Storage, ("vmid", 100),
            ("volumes", new JsonObject { [Device] = new JsonObject { ["size"] = Size }, [name] = new JsonObject { ["size"] = Size } })));
        Assert.Equal((int)ErrorCode.InvalidParams, query.Code);
        await AssertRefusedQueryStartedNothingAsync(s);
    }

    [Fact]
    public async Task Backup_vm_without_backup_init_is_refused()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        var e = s.Client.Fail("backup_vm", BackupVm(s.Storage, Volumes(Size, access.SocketPath)));
        Assert.Equal("backup_vm for guest 100 without backup_init on storage 'faults'", e.Message);
        AssertNothingChanged(s);
    }

    [Fact]
    public async Task A_second_backup_of_the_same_guest_at_once_is_refused()
    {
        using var s = await WithOneBackupAsync();
        Init(s);
        using var other = daemon.Connect();
        var e = other.Fail("backup_init", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("start-time", 1700000200)));
        Assert.Equal((int)ErrorCode.Busy, e.Code);
        Assert.Contains("backup of guest 100 on storage 'faults' is busy", e.Message, StringComparison.Ordinal);
        s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("success", false), ("info", new JsonObject())));
        other.Call("backup_init", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("start-time", 1700000200)));
        other.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("success", false), ("info", new JsonObject())));
        AssertNothingChanged(s);
    }

    [Fact]
    public async Task Backup_cleanup_without_success_keeps_a_committed_backup()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        Init(s);
        s.Client.Call("backup_vm", BackupVm(s.Storage, Volumes(Size, access.SocketPath)));
        // vzdump failed later (protected flag, prune...): QEMU has already moved its bitmap on.
        var stats = s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("success", false), ("info", new JsonObject { ["error"] = "prune failed" })))!;
        Assert.True(stats["stats"]!["archive-size"]!.GetValue<long>() > 0);
        var list = s.Client.Call("list_volumes", Json.Params(s.Storage))!.AsArray();
        Assert.Equal(2, list.Count);
        Assert.Contains("qemu-1700000100", File.ReadAllText(Path.Combine(s.Storage.Root, "100", "incremental.json")), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Guest_and_firewall_configs_are_kept_byte_for_byte()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        Init(s);
        byte[] config = [.. "memory: 512\n#qmdump#map:scsi0:drive-scsi0:local:qcow2:\n"u8.ToArray(), 0xFF, 0x00, 0xC3, 0xA9, (byte)'\n'];
        byte[] firewall = [.. "[OPTIONS]\nenable: 1\n"u8.ToArray(), 0xFE];
        var request = BackupVm(s.Storage, Volumes(Size, access.SocketPath));
        request["guest-config"] = Convert.ToBase64String(config);
        request["info"] = new JsonObject { ["firewall-config"] = Convert.ToBase64String(firewall) };
        s.Client.Call("backup_vm", request);
        s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("success", true), ("info", new JsonObject())));
        var volname = Json.Params(s.Storage, ("volname", "backup/100/qemu-1700000100"));
        Assert.Equal(config, Convert.FromBase64String(s.Client.Call("archive_get_guest_config", volname)!.GetValue<string>()));
        Assert.Equal(firewall, Convert.FromBase64String(s.Client.Call("archive_get_firewall_config", volname.DeepClone())!.GetValue<string>()));
    }

    [Fact]
    public async Task Backup_cleanup_for_an_unknown_guest_or_undefined_type_is_harmless()
    {
        using var s = await WithOneBackupAsync();
        var unknown = s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 555), ("vmtype", null), ("success", false), ("info", new JsonObject { ["error"] = "unable to find VM" })))!;
        Assert.Equal(0, unknown["stats"]!["archive-size"]!.GetValue<long>());
        s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", null), ("vmtype", null), ("success", false), ("info", null)));
        s.Client.Call("job_cleanup", Json.Params(s.Storage));
        s.Client.Call("job_cleanup", Json.Params(s.Storage));
        AssertNothingChanged(s);
    }

    [Fact]
    public async Task The_parent_of_a_backup_in_progress_cannot_be_deleted()
    {
        using var s = await WithOneBackupAsync();
        // The limiter lets the first 4 MiB unit go at once and holds each later one back: 9 MiB keep the backup
        // running for two seconds.
        await s.Disk.WriteAsync("write -P 0x7c 0 8M");
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        Init(s);
        var request = BackupVm(s.Storage, Volumes(Size, access.SocketPath));
        request["info"] = new JsonObject { ["bandwidth-limit"] = 4L << 20 };
        s.Client.SendLine(new JsonObject { ["jsonrpc"] = "2.0", ["id"] = 77, ["method"] = "backup_vm", ["params"] = request }.ToJsonString());
        var staged = Path.Combine(s.Storage.Root, "100", ".staging-qemu-1700000100", "manifest.json");
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!File.Exists(staged))
        {
            Assert.True(DateTime.UtcNow < deadline, "the backup did not start");
            await Task.Delay(20);
        }

        using (var admin = daemon.Connect())
        {
            var e = admin.Fail("free_image", Json.Params(s.Storage, ("volname", "backup/100/qemu-1700000000")));
            Assert.Equal((int)ErrorCode.HasDependents, e.Code);
            Assert.Contains("the backup in progress qemu-1700000100", e.Message, StringComparison.Ordinal);
        }

        var reply = s.Client.ReadMessage()!;
        while (reply["id"] is null)
        {
            reply = s.Client.ReadMessage()!;
        }
        Assert.Null(reply["error"]);
        s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("success", true), ("info", new JsonObject())));
        Assert.Equal("qemu-1700000000", new BackupStore(new StorageConfig("faults", s.Storage.Root), new StoreSettings())
            .ReadManifest(VolumeName.Parse("backup/100/qemu-1700000100")).Devices.Single().Parent);
    }

    [Fact]
    public async Task A_client_that_goes_away_mid_copy_leaves_nothing_behind()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        using (var vzdump = daemon.Connect())
        {
            vzdump.Call("backup_init", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("start-time", 1700000100)));
            var request = BackupVm(s.Storage, Volumes(Size, access.SocketPath, mode: "new"));
            request["info"] = new JsonObject { ["bandwidth-limit"] = 1L << 20 };
            vzdump.SendLine(new JsonObject { ["jsonrpc"] = "2.0", ["id"] = 99, ["method"] = "backup_vm", ["params"] = request }.ToJsonString());
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (!Directory.EnumerateFiles(Path.Combine(s.Storage.Root, "100"), "*.qcow2", SearchOption.AllDirectories).Any(f => f.Contains(".staging-", StringComparison.Ordinal)))
            {
                Assert.True(DateTime.UtcNow < deadline, "the copy did not start");
                await Task.Delay(50);
            }
            await Task.Delay(500);
        }
        await daemon.Daemon.WaitForOutputAsync("backup_vm from pid");
        var until = DateTime.UtcNow.AddSeconds(10);
        while (Directory.EnumerateDirectories(Path.Combine(s.Storage.Root, "100"), ".staging-*").Any() && DateTime.UtcNow < until)
        {
            await Task.Delay(50);
        }
        AssertNothingChanged(s);
        // The lock went with the connection: the next backup of the guest may start.
        Init(s, 1700000300);
        s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("success", false), ("info", new JsonObject())));
    }

    /// <summary>
    /// After a refused backup_vm_query_incremental: no image staged, given the time a started target needs to make
    /// one, and the backup, ended as a failure, changed nothing.
    /// </summary>
    private static async Task AssertRefusedQueryStartedNothingAsync(Setup s)
    {
        await Task.Delay(300);
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.GetDirectoryName(Staged(s, Device))!, "*.qcow2"));
        s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("success", false), ("info", new JsonObject())));
        AssertNothingChanged(s);
    }

    /// <summary>What every path of a target started ahead begins with (QEMU's command line keeps the staging name).</summary>
    private static string StagingPrefix(Setup s) => Path.Combine(s.Storage.Root, "100", ".staging-");

    private static string Staged(Setup s, string file) => Path.Combine(s.Storage.Root, "100", ".staging-qemu-1700000100", file);

    private static async Task<string> WaitForStagedImageAsync(Setup s, string device = Device)
    {
        var image = Staged(s, device + ".qcow2");
        var deadline = DateTime.UtcNow.AddSeconds(10);
        // Served means qemu-storage-daemon runs on it: while qemu-img is still creating it, its header may not
        // name the backing file yet (qcow2 creation adds it last).
        while (!File.Exists(image) || QemuProcessesOn(image, "qemu-storage-daemon").Count == 0)
        {
            Assert.True(DateTime.UtcNow < deadline, $"no target was started for {device}");
            await Task.Delay(20);
        }
        return image;
    }

    /// <summary>qemu-storage-daemon or qemu-img processes (or only <paramref name="tool"/>) whose command line names <paramref name="path"/>.</summary>
    private static List<int> QemuProcessesOn(string path, string tool = "qemu-")
    {
        var pids = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid))
            {
                continue;
            }
            try
            {
                var argv = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0');
                if (Path.GetFileName(argv[0]).StartsWith(tool, StringComparison.Ordinal) && argv.Any(a => a.Contains(path, StringComparison.Ordinal)))
                {
                    pids.Add(pid);
                }
            }
            catch (IOException)
            {
            }
        }
        return pids;
    }

    private static async Task AssertNoQemuLeftOnAsync(string path)
    {
        // A discarded target's QEMU is killed before the call returns; allow for the kernel reaping it.
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (QemuProcessesOn(path).Count > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }
        Assert.Empty(QemuProcessesOn(path));
    }

    /// <summary>Inode number and birth time: a file deleted and created again may get the same inode number.</summary>
    private static async Task<string> FileIdentityAsync(string path) => (await ChildProcess.RunAsync("stat", ["-c", "%i %w", path], CancellationToken.None)).Trim();

    private static async Task<string?> BackingFileAsync(string image)
    {
        var info = JsonNode.Parse(await ChildProcess.RunAsync("qemu-img", ["info", "-U", "--output=json", image], CancellationToken.None))!;
        return info["backing-filename"]?.GetValue<string>();
    }

    /// <summary>The committed image equals the disk as the backup access froze it, and no QEMU of a target runs on.</summary>
    private static async Task AssertCommittedAndNothingLeftAsync(Setup s, BackupAccess access, string committed)
    {
        await SourceDisk.Run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", access.FrozenState, committed);
        await AssertNoQemuLeftOnAsync(StagingPrefix(s));
    }

    /// <summary>backup_vm and a successful backup_cleanup; returns the committed image of <see cref="Device"/>.</summary>
    private static string BackUp(Setup s, JsonObject volumes)
    {
        s.Client.Call("backup_vm", BackupVm(s.Storage, volumes));
        s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("success", true), ("info", new JsonObject())));
        return Path.Combine(s.Storage.Root, "100", "qemu-1700000100", Device + ".qcow2");
    }

    /// <summary>backup_init and backup_vm_query_incremental, then a wait until every device's target is being served.</summary>
    private static async Task<(JsonNode Answer, string Image)> StartTargetsAheadAsync(Setup s, params string[] devices)
    {
        Init(s);
        var answer = s.Client.Call("backup_vm_query_incremental", Query(s, devices))!;
        foreach (var device in devices)
        {
            await WaitForStagedImageAsync(s, device);
        }
        return (answer, Staged(s, devices[0] + ".qcow2"));
    }

    private static JsonObject Query(Setup s, params string[] devices) =>
        Json.Params(s.Storage, ("vmid", 100), ("volumes", new JsonObject(devices.Select(d => KeyValuePair.Create(d, (JsonNode?)new JsonObject { ["size"] = Size })))));

    [Fact]
    public async Task Query_incremental_starts_each_target_ahead_and_backup_vm_copies_into_that_image()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        var (answer, image) = await StartTargetsAheadAsync(s, Device);
        Assert.Equal("use", answer[Device]!.GetValue<string>());
        Assert.Equal($"../qemu-1700000000/{Device}.qcow2", await BackingFileAsync(image));
        var identity = await FileIdentityAsync(image);

        var committed = BackUp(s, Volumes(Size, access.SocketPath));
        Assert.Equal(identity, await FileIdentityAsync(committed));
        await AssertCommittedAndNothingLeftAsync(s, access, committed);
    }

    [Fact]
    public async Task A_target_started_for_an_incremental_is_replaced_when_QEMU_makes_the_backup_full()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        Assert.NotNull(await BackingFileAsync((await StartTargetsAheadAsync(s, Device)).Image));

        // QEMU lost the bitmap (the VM was restarted): the answered "use" became a new bitmap, a full backup.
        var committed = BackUp(s, Volumes(Size, access.SocketPath, mode: "new"));
        Assert.Null(await BackingFileAsync(committed));
        await AssertCommittedAndNothingLeftAsync(s, access, committed);
    }

    [Fact]
    public async Task A_target_that_failed_to_start_ahead_is_started_again_by_backup_vm()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        Init(s);
        // Something in the image's place makes qemu-img fail at query time; it is gone when backup_vm comes.
        var image = Staged(s, Device + ".qcow2");
        Directory.CreateDirectory(image);
        s.Client.Call("backup_vm_query_incremental", Query(s, Device));
        await daemon.Daemon.WaitForOutputAsync($"the target started ahead at {image} failed");
        Directory.Delete(image);

        var committed = BackUp(s, Volumes(Size, access.SocketPath));
        Assert.Equal($"../qemu-1700000000/{Device}.qcow2", await BackingFileAsync(committed));
        await AssertCommittedAndNothingLeftAsync(s, access, committed);
    }

    private static JsonObject QueryInMode(Setup s, string mode)
    {
        var query = Query(s, Device);
        query["scfg"]!["dirbackup-vm-mode"] = mode;
        return query;
    }

    [Fact]
    public async Task A_storage_in_full_mode_asks_for_no_bitmap_and_backs_up_in_full_into_the_target_started_ahead()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        Init(s);
        Assert.Null(s.Client.Call("backup_vm_query_incremental", QueryInMode(s, "full")));
        var image = await WaitForStagedImageAsync(s);
        Assert.Null(await BackingFileAsync(image));
        var identity = await FileIdentityAsync(image);

        // No answer: qemu-server attaches no bitmap.
        var committed = BackUp(s, Volumes(Size, access.SocketPath, mode: "none", bitmap: null));
        Assert.Equal(identity, await FileIdentityAsync(committed));
        Assert.Null(await BackingFileAsync(committed));
        await AssertCommittedAndNothingLeftAsync(s, access, committed);
        Assert.DoesNotContain(Device, File.ReadAllText(Path.Combine(s.Storage.Root, "100", "incremental.json")), StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_unknown_vm_mode_is_refused_and_starts_no_target()
    {
        using var s = await WithOneBackupAsync();
        Init(s);
        var e = s.Client.Fail("backup_vm_query_incremental", QueryInMode(s, "sometimes"));
        Assert.Equal("dirbackup-vm-mode 'sometimes' is neither incremental nor full", e.Message);
        await AssertRefusedQueryStartedNothingAsync(s);
    }

    [Fact]
    public async Task A_second_query_replaces_the_targets_the_first_one_started()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        var image = (await StartTargetsAheadAsync(s, Device)).Image;
        s.Client.Call("backup_vm_query_incremental", Query(s, Device));
        await WaitForStagedImageAsync(s);
        Assert.Single(QemuProcessesOn(image));

        var committed = BackUp(s, Volumes(Size, access.SocketPath));
        await AssertCommittedAndNothingLeftAsync(s, access, committed);
    }

    [Fact]
    public async Task A_target_started_for_a_device_backup_vm_leaves_out_is_stopped_and_not_committed()
    {
        using var s = await WithOneBackupAsync();
        await using var access = await s.Disk.OpenBackupAccessAsync(Device);
        await StartTargetsAheadAsync(s, Device, "drive-scsi1");

        BackUp(s, Volumes(Size, access.SocketPath));
        Assert.Equal([Device + ".digests", Device + ".qcow2", "guest.conf", "manifest.json"],
            Directory.EnumerateFiles(Path.Combine(s.Storage.Root, "100", "qemu-1700000100")).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        await AssertNoQemuLeftOnAsync(StagingPrefix(s));
    }

    [Fact]
    public async Task Targets_started_ahead_go_with_a_backup_that_fails_before_backup_vm()
    {
        using var s = await WithOneBackupAsync();
        await StartTargetsAheadAsync(s, Device);
        // qemu-server failed to set up QEMU's backup access (no fleecing storage, say).
        s.Client.Call("backup_cleanup", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("success", false), ("info", new JsonObject { ["error"] = "cannot setup backup access without fleecing" })));
        await AssertNoQemuLeftOnAsync(StagingPrefix(s));
        AssertNothingChanged(s);
    }

    [Fact]
    public async Task Targets_started_ahead_go_when_vzdump_goes_away_before_backup_vm()
    {
        using var s = await WithOneBackupAsync();
        using (var vzdump = daemon.Connect())
        {
            vzdump.Call("backup_init", Json.Params(s.Storage, ("vmid", 100), ("vmtype", "qemu"), ("start-time", 1700000100)));
            vzdump.Call("backup_vm_query_incremental", Query(s, Device));
            await WaitForStagedImageAsync(s);
        }
        var until = DateTime.UtcNow.AddSeconds(10);
        while (Directory.EnumerateDirectories(Path.Combine(s.Storage.Root, "100"), ".staging-*").Any() && DateTime.UtcNow < until)
        {
            await Task.Delay(50);
        }
        await AssertNoQemuLeftOnAsync(StagingPrefix(s));
        AssertNothingChanged(s);
    }
}

/// <summary>A storage on a filesystem of its own, mounted for the test and lazily unmounted after it.</summary>
public abstract class MountedStorageTests(string name) : IDisposable
{
    protected TempDir Dir { get; } = new(name);

    /// <summary>Runs mount with <paramref name="source"/> at a fresh mount point; the storage lives inside it.</summary>
    protected async Task<StorageBuilder> MountStorageAsync(string storeId, params string[] source)
    {
        var mountpoint = Dir.Combine("mnt");
        Directory.CreateDirectory(mountpoint);
        await SourceDisk.Run("mount", [.. source, mountpoint]);
        return new StorageBuilder(Path.Combine(mountpoint, "store"), storeId);
    }

    /// <summary>
    /// Unmounts everything under the test's directory, deepest first: the storage, and whatever a failed test left
    /// mounted there (a crashed daemon's restore export), so no mount outlives the run.
    /// </summary>
    public void Dispose()
    {
        var mounts = File.ReadAllLines("/proc/self/mountinfo").Select(l => l.Split(' ')[4])
            .Where(m => m.StartsWith(Dir.Path + "/", StringComparison.Ordinal)).OrderByDescending(m => m.Length);
        foreach (var mount in mounts)
        {
            System.Diagnostics.Process.Start("umount", ["-l", mount])!.WaitForExit();
        }
        Dir.Dispose();
        GC.SuppressFinalize(this);
    }
}

/// <summary>The storage filling up in the middle of a copy, on a small loop-mounted filesystem.</summary>
[Trait("speed", "slow")]
public sealed class DiskFullTests() : MountedStorageTests("dirbackup-full")
{
    [Fact]
    public async Task A_full_storage_fails_the_backup_cleanly_and_leaves_nothing()
    {
        var storage = await SmallStorageAsync();
        var socket = Dir.Combine("run", "dirbackupd.sock");
        await using var daemon = await DaemonProcess.StartAsync(socket);
        var disk = await SourceDisk.CreateAsync(Dir.Combine("vm"), 64L << 20, "snapshot-access:small");
        await disk.WriteAsync("write -P 0x77 0 40M");

        await using (var access = await disk.OpenBackupAccessAsync("drive-scsi0"))
        {
            var run = await VzdumpVm.RunAsync(socket, storage, 100, "drive-scsi0", 64L << 20, access.SocketPath, disk.Bitmap, 1700000000);
            Assert.Equal(1, run.ExitCode);
            Assert.Contains("No space left on device", run.Output["error"]!.GetValue<string>(), StringComparison.Ordinal);
        }

        using var client = LineClient.Connect(socket);
        Assert.Empty(client.Call("list_volumes", Json.Params(storage))!.AsArray());
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(storage.Root, "100"), ".staging-*"));
        Assert.False(File.Exists(Path.Combine(storage.Root, "100", "incremental.json")));

        // The same for a container whose archive does not fit.
        var tree = Dir.Combine("ct", "tree");
        await ContainerTree.CreateAsync(tree);
        await SourceDisk.Run("sh", "-c", $"head -c 40M /dev/urandom > '{tree}/big' && chown 100000:100000 '{tree}/big' && chmod o+x '{Dir.Path}' '{Dir.Combine("ct")}'");
        Directory.CreateDirectory(storage.Root + "-ct");
        var ct = await VzdumpVm.ContainerAsync(socket, storage, 300, tree, 1700000000, []);
        Assert.Equal(1, ct.ExitCode);
        Assert.Contains("No space left on device", ct.Output["error"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Empty(client.Call("list_volumes", Json.Params(storage))!.AsArray());
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(storage.Root, "300"), ".staging-*"));
    }

    [Fact]
    public async Task An_incremental_that_does_not_fit_fails_cleanly_and_keeps_the_record()
    {
        var storage = await SmallStorageAsync();
        var socket = Dir.Combine("run", "dirbackupd.sock");
        await using var daemon = await DaemonProcess.StartAsync(socket);
        var disk = await SourceDisk.CreateAsync(Dir.Combine("vm"), 64L << 20, "snapshot-access:small");
        await disk.WriteAsync("write -P 0x11 0 4M");
        await using (var access = await disk.OpenBackupAccessAsync("drive-scsi0"))
        {
            var full = await VzdumpVm.RunAsync(socket, storage, 100, "drive-scsi0", 64L << 20, access.SocketPath, disk.Bitmap, 1700000000);
            Assert.True(full.ExitCode == 0, full.Log);
        }
        await disk.CommitBitmapAsync();
        var record = File.ReadAllBytes(Path.Combine(storage.Root, "100", "incremental.json"));
        await disk.WriteAsync("write -P 0x22 8M 40M");

        await using (var access = await disk.OpenBackupAccessAsync("drive-scsi0"))
        {
            var run = await VzdumpVm.RunAsync(socket, storage, 100, "drive-scsi0", 64L << 20, access.SocketPath, disk.Bitmap, 1700000100);
            Assert.Equal(1, run.ExitCode);
            Assert.Contains("No space left on device", run.Output["error"]!.GetValue<string>(), StringComparison.Ordinal);
        }

        using var client = LineClient.Connect(socket);
        Assert.Equal(["backup/100/qemu-1700000000"], client.Call("list_volumes", Json.Params(storage))!.AsArray().Select(v => v!["volid"]!.GetValue<string>().Split(':')[1]));
        Assert.Empty(Directory.EnumerateDirectories(Path.Combine(storage.Root, "100"), ".staging-*"));
        Assert.Equal(record, File.ReadAllBytes(Path.Combine(storage.Root, "100", "incremental.json")));
    }

    [Fact]
    public async Task A_merge_that_runs_out_of_space_fails_clearly_keeps_the_newer_backup_whole_and_finishes_once_there_is_room()
    {
        var storage = await SmallStorageAsync();
        var store = new BackupStore(new StorageConfig("small", storage.Root), new StoreSettings());
        var full = await storage.AddVmWithImageAsync(100, 1700000000, null, "write -P 0x11 0 2M");
        var next = await storage.AddVmWithImageAsync(100, 1700086400, "1700000000", "write -P 0x22 4M 8M");
        var nextImage = Path.Combine(next.Directory, "drive-scsi0.qcow2");
        var expected = Dir.Combine("expected.raw");
        await SourceDisk.Run("qemu-img", "convert", "-O", "raw", nextImage, expected);
        // Leave 2 MiB: the merge has to write the newer backup's 8 MiB into the older image.
        var filler = Path.Combine(storage.Root, "filler");
        await SourceDisk.Run("fallocate", "-l", (new DriveInfo(storage.Root).AvailableFreeSpace - (2 << 20)).ToString(System.Globalization.CultureInfo.InvariantCulture), filler);

        var e = await Assert.ThrowsAsync<DirBackupException>(() => store.DeleteAsync(full.Volume, default));

        Assert.Equal(ErrorCode.IoError, e.Code);
        Assert.Contains("No space left on device", e.Message, StringComparison.Ordinal);
        Assert.Contains("'backup/100/qemu-1700000000' is no longer listed, and 'pvesm free small:backup/100/qemu-1700000000' or the next prune of guest 100 finishes the merge", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal([next.Volume], store.ListBackups(100).Select(b => b.Volume));
        Assert.Equal("qemu-1700000000", store.ReadManifest(next.Volume).Devices.Single().Parent);
        ChainBuilder.Build(store, next.Volume, "drive-scsi0");
        await SourceDisk.Run("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", expected, nextImage);

        File.Delete(filler);
        await store.DeleteAsync(full.Volume, default);

        Assert.False(Directory.Exists(full.Directory));
        Assert.Null(store.ReadManifest(next.Volume).Devices.Single().Parent);
        ChainBuilder.Build(store, next.Volume, "drive-scsi0");
        await SourceDisk.Run("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", expected, nextImage);
    }

    private async Task<StorageBuilder> SmallStorageAsync()
    {
        var image = Dir.Combine("fs.img");
        await SourceDisk.Run("truncate", "-s", "24M", image);
        await SourceDisk.Run("mkfs.ext4", "-q", "-F", image);
        return await MountStorageAsync("small", "-o", "loop", image);
    }
}

/// <summary>A storage on ramfs, which refuses O_DIRECT: the target falls back to the page cache and the backup still equals the disk.</summary>
[Trait("speed", "slow")]
public sealed class NoDirectIoStorageTests() : MountedStorageTests("dirbackup-ramfs")
{
    [Fact]
    public async Task A_storage_without_direct_io_takes_a_full_backup_equal_to_the_disk()
    {
        var storage = await MountStorageAsync("ram", "-t", "ramfs", "ramfs");
        var socket = Dir.Combine("run", "dirbackupd.sock");
        await using var daemon = await DaemonProcess.StartAsync(socket);
        var disk = await SourceDisk.CreateAsync(Dir.Combine("vm"), 64L << 20, "snapshot-access:ram");
        await disk.WriteAsync("write -P 0x5a 0 8M", "write -P 0xa5 32M 1M");

        await using var access = await disk.OpenBackupAccessAsync("drive-scsi0");
        var run = await VzdumpVm.RunAsync(socket, storage, 100, "drive-scsi0", 64L << 20, access.SocketPath, disk.Bitmap, 1700000000);
        Assert.True(run.ExitCode == 0, run.Log);
        await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "qcow2", access.FrozenState, Path.Combine(storage.Root, "100", "qemu-1700000000", "drive-scsi0.qcow2")], CancellationToken.None);
    }
}
