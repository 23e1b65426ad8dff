using System.Text.Json.Nodes;
using DirBackup.Errors;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Integration;

/// <summary>
/// Two nodes of a cluster sharing one storage, each with its own daemon: a restore on one and a delete or merge on the
/// other exclude each other through the guest's lock file, as they do within one daemon. The third party, holding a
/// delete's locks as another node's daemon does, stands for a delete or merge caught in progress.
/// </summary>
[Collection(PathSocketCollection.Name)]
public sealed class SharedStorageTests(PathSocketDaemon nodeA) : IAsyncLifetime
{
    private const string Full = "backup/100/qemu-1700000000";
    private const string Incremental = "backup/100/qemu-1700086400";
    private readonly TempDir _dir = new("dirbackupd-node-b");
    private DaemonProcess? _nodeB;
    private StorageBuilder _storage = null!;

    public async Task InitializeAsync()
    {
        _nodeB = await DaemonProcess.StartAsync(_dir.Combine("run", "dirbackupd.sock"), options: ["--abandoned-restore-check", "1"]);
        _storage = nodeA.NewStorage("shared");
        await _storage.AddVmWithImageAsync(100, 1700000000, null, "write -P 1 0 1M");
        await _storage.AddVmWithImageAsync(100, 1700086400, "1700000000", "write -P 2 512K 64K");
    }

    public async Task DisposeAsync()
    {
        await _nodeB!.DisposeAsync();
        _dir.Dispose();
    }

    private LineClient NodeB() => LineClient.Connect(_nodeB!.SocketPath);

    [Fact]
    public void A_backup_being_restored_on_one_node_is_neither_deleted_nor_merged_away_on_another_until_the_restore_ends()
    {
        using var a = nodeA.Connect();
        using var b = NodeB();
        a.Call("restore_vm_init", Json.Params(_storage, ("volname", Incremental)));
        var before = _storage.Snapshot();

        var deleted = b.Fail("free_image", Json.Params(_storage, ("volname", Incremental)));
        Assert.Equal((int)ErrorCode.Busy, deleted.Code);
        Assert.Equal($"cannot remove backup '{Incremental}': it is being restored, here or on another node sharing the storage; try again after the restore (a restore whose task was killed holds it until dirbackupd on its node notices, within a minute)", deleted.Message);
        var merged = b.Fail("free_image", Json.Params(_storage, ("volname", Full)));
        Assert.Equal((int)ErrorCode.Busy, merged.Code);
        Assert.Contains($"changes images that the restore of '{Incremental}' reads", merged.Message, StringComparison.Ordinal);
        Assert.Equal(before, _storage.Snapshot());

        a.Call("restore_vm_cleanup", Json.Params(_storage, ("volname", Incremental)));
        b.Call("free_image", Json.Params(_storage, ("volname", Full)));
        Assert.False(Directory.Exists(Path.Combine(_storage.Root, "100", "qemu-1700000000")));
        b.Call("free_image", Json.Params(_storage, ("volname", Incremental)));
    }

    [Fact]
    public void A_restore_is_refused_on_any_node_while_its_backup_is_deleted_or_its_guest_merged_and_allowed_after()
    {
        using var a = nodeA.Connect();
        using (var deleting = InUse.BeginDelete(_storage.Root, VolumeName.Parse(Full)))
        {
            var e = a.Fail("restore_vm_init", Json.Params(_storage, ("volname", Full)));
            Assert.Equal((int)ErrorCode.Busy, e.Code);
            Assert.Equal($"cannot restore '{Full}' now: it is being deleted, here or on another node sharing the storage", e.Message);
            // Deleting one backup leaves the others of the guest free to restore, until it comes to a merge.
            a.Call("restore_vm_init", Json.Params(_storage, ("volname", Incremental)));
            a.Call("restore_vm_cleanup", Json.Params(_storage, ("volname", Incremental)));

            deleting.ExcludeRestoresOfGuest();
            e = a.Fail("restore_vm_init", Json.Params(_storage, ("volname", Incremental)));
            Assert.Equal((int)ErrorCode.Busy, e.Code);
            Assert.Contains("a backup of guest 100 is being merged into a newer one", e.Message, StringComparison.Ordinal);
        }
        a.Call("restore_vm_init", Json.Params(_storage, ("volname", Incremental)));
        using (var b = NodeB())
        {
            Assert.Equal((int)ErrorCode.Busy, b.Fail("free_image", Json.Params(_storage, ("volname", Incremental))).Code);
        }
        a.Call("restore_vm_cleanup", Json.Params(_storage, ("volname", Incremental)));
    }

    [Fact]
    public void A_container_archive_that_pve_reads_in_place_is_not_deleted_on_another_node_until_the_cleanup()
    {
        var container = _storage.AddContainer(101, 1700000000);
        using var a = nodeA.Connect();
        using var b = NodeB();
        a.Call("restore_container_init", Json.Params(_storage, ("volname", container.VolName), ("info", new JsonObject())));
        var e = b.Fail("free_image", Json.Params(_storage, ("volname", container.VolName)));
        Assert.Equal((int)ErrorCode.Busy, e.Code);
        Assert.True(File.Exists(Path.Combine(container.Directory, "archive.tar")));

        a.Call("restore_container_cleanup", Json.Params(_storage, ("volname", container.VolName), ("info", new JsonObject())));
        a.Call("restore_container_cleanup", Json.Params(_storage, ("volname", container.VolName), ("info", new JsonObject())));
        b.Call("free_image", Json.Params(_storage, ("volname", container.VolName)));
        Assert.False(Directory.Exists(container.Directory));
    }

    [Theory]
    [InlineData("vm")]
    [InlineData("tar")]
    [InlineData("squashfs")]
    public async Task A_restore_whose_task_was_killed_before_its_cleanup_lets_go_of_its_backup_on_every_node(string kind)
    {
        var (volname, init, path) = kind switch
        {
            "vm" => (Incremental, ("restore_vm_volume_init", Json.Params(_storage, ("volname", Incremental), ("device", "drive-scsi0"), ("info", new JsonObject()))), "qemu-img-path"),
            "tar" => (_storage.AddContainer(101, 1700000000).VolName, ("restore_container_init", ContainerParams(101)), "tar-path"),
            _ => (await AddSquashfsContainerAsync(101), ("restore_container_init", ContainerParams(101)), "archive-directory"),
        };
        var calls = kind == "vm" ? new[] { ("restore_vm_init", Json.Params(_storage, ("volname", volname))), init } : [init];
        using var caller = await CallerProcess.StartAsync(_nodeB!.SocketPath, calls);
        var exported = caller.Replies[^1]["result"]![path]!.GetValue<string>();
        Assert.True(File.Exists(exported) || Directory.Exists(exported), exported);
        using var a = nodeA.Connect();

        // Node B looks every second; a caller that is still there keeps its restore however long it stays quiet.
        await Task.Delay(TimeSpan.FromSeconds(3));
        Assert.Equal((int)ErrorCode.Busy, a.Fail("free_image", Json.Params(_storage, ("volname", volname))).Code);
        Assert.True(File.Exists(exported) || Directory.Exists(exported), exported);

        caller.Kill();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (a.Request("free_image", Json.Params(_storage, ("volname", volname)))["error"] is JsonNode error)
        {
            Assert.Equal((int)ErrorCode.Busy, error["code"]!.GetValue<int>());
            Assert.True(DateTime.UtcNow < deadline, "the killed restore still holds its backup: " + error["message"]);
            await Task.Delay(200);
        }
        var backup = VolumeName.Parse(volname);
        Assert.False(Directory.Exists(Path.Combine(_storage.Root, backup.VmId.ToString(System.Globalization.CultureInfo.InvariantCulture), backup.BackupDirName)));
        Assert.False(File.Exists(exported) || Directory.Exists(exported), $"the export {exported} outlived its restore");
        Assert.DoesNotContain(File.ReadAllLines("/proc/self/mounts"), m => m.Contains(_dir.Path, StringComparison.Ordinal));
        // The daemon logs after the cleanup that let the delete through, and its output arrives through a pipe.
        await _nodeB.WaitForOutputAsync($"restore of {volname} on {_storage.Root} ended without its cleanup call: the process that made its calls ({caller.Pid}) is gone");
    }

    private JsonObject ContainerParams(int vmid) =>
        Json.Params(_storage, ("volname", $"backup/{vmid}/lxc-1700000000"), ("info", new JsonObject()));

    private async Task<string> AddSquashfsContainerAsync(int vmid)
    {
        var container = _storage.AddContainer(vmid, 1700000000, "archive.sqfs");
        var tree = Directory.CreateDirectory(_dir.Combine("ct"));
        await File.WriteAllTextAsync(Path.Combine(tree.FullName, "hostname"), "ct\n");
        var image = Path.Combine(container.Directory, "archive.sqfs");
        File.Delete(image);
        await SourceDisk.Run("mksquashfs", tree.FullName, image, "-quiet", "-no-progress");
        return container.VolName;
    }
}
