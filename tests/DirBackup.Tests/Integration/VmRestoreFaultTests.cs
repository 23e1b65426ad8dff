using System.Text.Json.Nodes;
using DirBackup.Errors;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Integration;

/// <summary>A restore refuses every chain it cannot vouch for, exports nothing, and changes nothing.</summary>
[Collection(PathSocketCollection.Name)]
[Trait("speed", "slow")]
public sealed class VmRestoreFaultTests(PathSocketDaemon daemon)
{
    private const string Device = "drive-scsi0";
    private const long Size = 8L << 20;
    private const string Top = "backup/100/qemu-1700000100";

    private sealed record Setup(StorageBuilder Storage, LineClient Client, string BaseImage, string TopImage) : IDisposable
    {
        public void Dispose() => Client.Dispose();
    }

    private async Task<Setup> WithChainAsync()
    {
        var storage = daemon.NewStorage("restore");
        var disk = await SourceDisk.CreateAsync(storage.Root + "-vm", Size, "snapshot-access:restore");
        await disk.WriteAsync("write -P 0x31 0 2M");
        foreach (var time in new[] { 1700000000, 1700000100 })
        {
            await VzdumpVm.BackUpAsync(daemon.SocketPath, storage, 100, Device, disk, time);
            await disk.WriteAsync("write -P 0x42 4M 1M");
        }
        return new Setup(storage, daemon.Connect(),
            Path.Combine(storage.Root, "100", "qemu-1700000000", Device + ".qcow2"),
            Path.Combine(storage.Root, "100", "qemu-1700000100", Device + ".qcow2"));
    }

    private string ExportDir => Path.Combine(Path.GetDirectoryName(daemon.SocketPath)!, "qsd", "restore");

    private RpcErrorException RefusedAndNothingExported(Setup s, string volname = Top, string device = Device)
    {
        var before = s.Storage.Snapshot();
        s.Client.Call("restore_vm_init", Json.Params(s.Storage, ("volname", volname)));
        var e = s.Client.Fail("restore_vm_volume_init", Json.Params(s.Storage, ("volname", volname), ("device", device), ("info", new JsonObject())));
        Assert.DoesNotContain('\n', e.Message);
        s.Client.Call("restore_vm_volume_cleanup", Json.Params(s.Storage, ("volname", volname), ("device", Device), ("info", new JsonObject())));
        s.Client.Call("restore_vm_cleanup", Json.Params(s.Storage, ("volname", volname)));
        Assert.False(Directory.Exists(ExportDir) && Directory.EnumerateFiles(ExportDir).Any(), "an export was left behind");
        Assert.Equal(before, s.Storage.Snapshot());
        return e;
    }

    [Fact]
    public async Task A_header_naming_a_backing_file_outside_the_storage_is_refused()
    {
        using var s = await WithChainAsync();
        await SourceDisk.Run("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", s.TopImage);
        var e = RefusedAndNothingExported(s);
        Assert.Contains("names backing file '/etc/shadow'", e.Message, StringComparison.Ordinal);
        Assert.Contains("tampered", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_header_with_a_json_file_name_is_refused()
    {
        using var s = await WithChainAsync();
        await SourceDisk.Run("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", "json:{\"file\":{\"driver\":\"file\",\"filename\":\"/etc/shadow\"}}", s.TopImage);
        var e = RefusedAndNothingExported(s);
        Assert.Contains("json:", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_base_naming_a_backing_file_of_its_own_is_refused()
    {
        using var s = await WithChainAsync();
        await SourceDisk.Run("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", s.BaseImage);
        var e = RefusedAndNothingExported(s);
        Assert.Contains("qemu-1700000000", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_layer_replaced_by_a_symlink_is_refused()
    {
        using var s = await WithChainAsync();
        File.Move(s.BaseImage, s.BaseImage + ".real");
        File.CreateSymbolicLink(s.BaseImage, s.BaseImage + ".real");
        var e = RefusedAndNothingExported(s);
        Assert.Contains("is not a regular file", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_missing_layer_is_refused()
    {
        using var s = await WithChainAsync();
        File.Delete(s.BaseImage);
        var e = RefusedAndNothingExported(s);
        Assert.Contains("is missing", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_layer_with_an_external_data_file_is_refused()
    {
        using var s = await WithChainAsync();
        File.Delete(s.BaseImage);
        await SourceDisk.Run("qemu-img", "create", "-q", "-f", "qcow2", "-o", $"data_file={s.BaseImage}.data", s.BaseImage, Size.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var e = RefusedAndNothingExported(s);
        Assert.Contains("external file", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_device_the_backup_does_not_have_is_refused()
    {
        using var s = await WithChainAsync();
        var e = RefusedAndNothingExported(s, device: "drive-virtio7");
        Assert.Equal($"backup '{Top}' has no device 'drive-virtio7' (it has drive-scsi0)", e.Message);
    }

    [Fact]
    public async Task A_volume_name_this_storage_does_not_hold_is_refused()
    {
        using var s = await WithChainAsync();
        var e = s.Client.Fail("restore_vm_init", Json.Params(s.Storage, ("volname", "backup/100/qemu-1600000000")));
        Assert.Equal((int)ErrorCode.NotFound, e.Code);
        e = s.Client.Fail("restore_vm_volume_init", Json.Params(s.Storage, ("volname", "backup/100/lxc-1700000000"), ("device", Device), ("info", new JsonObject())));
        Assert.Contains("container backup", e.Message, StringComparison.Ordinal);
        foreach (var absent in new[] { "backup/100/qemu-1600000000", "backup/4242/qemu-1700000000" })
        {
            e = s.Client.Fail("restore_vm_volume_init", Json.Params(s.Storage, ("volname", absent), ("device", Device), ("info", new JsonObject())));
            Assert.Equal((int)ErrorCode.NotFound, e.Code);
            Assert.Equal($"backup '{absent}' does not exist on storage '{s.Storage.StoreId}'", e.Message);
        }
        Assert.False(Directory.Exists(Path.Combine(s.Storage.Root, "4242")));
        Assert.False(Directory.Exists(ExportDir) && Directory.EnumerateFiles(ExportDir).Any());
    }

    [Fact]
    public async Task Cleanup_twice_or_without_init_is_harmless_and_a_restore_blocks_deletion()
    {
        using var s = await WithChainAsync();
        s.Client.Call("restore_vm_cleanup", Json.Params(s.Storage, ("volname", Top)));
        s.Client.Call("restore_vm_volume_cleanup", Json.Params(s.Storage, ("volname", Top), ("device", Device), ("info", new JsonObject())));
        var path = Export(s);
        Assert.Equal(Size, new FileInfo(path).Length);
        Assert.Equal((int)ErrorCode.Busy, s.Client.Fail("free_image", Json.Params(s.Storage, ("volname", Top))).Code);
        for (int i = 0; i < 2; i++)
        {
            EndRestore(s);
        }
        Assert.False(File.Exists(path));
        s.Client.Call("free_image", Json.Params(s.Storage, ("volname", Top)));
    }

    private string Export(Setup s)
    {
        s.Client.Call("restore_vm_init", Json.Params(s.Storage, ("volname", Top)));
        return s.Client.Call("restore_vm_volume_init", Json.Params(s.Storage, ("volname", Top), ("device", Device), ("info", new JsonObject())))!["qemu-img-path"]!.GetValue<string>();
    }

    private static void EndRestore(Setup s)
    {
        s.Client.Call("restore_vm_volume_cleanup", Json.Params(s.Storage, ("volname", Top), ("device", Device), ("info", new JsonObject())));
        s.Client.Call("restore_vm_cleanup", Json.Params(s.Storage, ("volname", Top)));
    }

    [Fact]
    public async Task The_exported_file_shows_the_chains_data_and_holes_and_cannot_be_written()
    {
        using var s = await WithChainAsync();
        var path = Export(s);

        // The full backup's 2 MiB and the incremental's 1 MiB.
        Assert.Equal([(0L, 2L << 20), (4L << 20, 1L << 20)], await SourceDisk.DataRangesAsync(path));
        await SourceDisk.Run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", path, s.TopImage);
        Assert.ThrowsAny<IOException>(() => File.Open(path, FileMode.Open, FileAccess.ReadWrite).Dispose());
        Assert.False(File.Exists(path + ".pid"), "the daemon serves its own chains; no qemu-storage-daemon runs");
        Assert.Contains(File.ReadAllLines("/proc/self/mountinfo"), l => l.Split(' ')[4] == path && l.Contains(" - fuse.dirbackupd ", StringComparison.Ordinal));

        EndRestore(s);
        Assert.DoesNotContain(path, File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_chain_with_compressed_clusters_is_served_by_qemu_and_reads_the_same()
    {
        using var s = await WithChainAsync();
        var compressed = s.BaseImage + ".compressed";
        await SourceDisk.Run("qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", s.BaseImage, compressed);
        File.Move(compressed, s.BaseImage, overwrite: true);
        var path = Export(s);

        Assert.True(File.Exists(path + ".pid"), "a compressed layer is served through qemu-storage-daemon");
        await SourceDisk.Run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", path, s.TopImage);
        EndRestore(s);
        Assert.False(File.Exists(path));
    }
}

/// <summary>
/// A storage on a filesystem that shares blocks between files (XFS or btrfs, loop-mounted): the restore export is a
/// plain read-only file made of the layers' own blocks, not a FUSE file, and it leaves nothing in the storage.
/// </summary>
[Trait("speed", "slow")]
public sealed class SharedBlocksRestoreTests() : MountedStorageTests("dirbackup-xfs")
{
    private const string Device = "drive-scsi0";
    private const long Size = (8L << 20) + 1536; // ends off a 4 KiB block: the last bytes are copied, not shared
    private const string Top = "backup/100/qemu-1700000100";

    private string Socket => Dir.Combine("run", "dirbackupd.sock");
    private string ExportDir => Dir.Combine("run", "qsd", "restore");

    private async Task<(StorageBuilder Storage, string TopImage)> ChainOnAsync(string filesystem)
    {
        var image = Dir.Combine(filesystem + ".img");
        await SourceDisk.Run("truncate", "-s", "512M", image);
        await SourceDisk.Run("mkfs." + filesystem, "-q", image);
        var storage = await MountStorageAsync(filesystem, "-o", "loop", image);
        var disk = await SourceDisk.CreateAsync(Dir.Combine("vm"), Size, "snapshot-access:xfs");
        await disk.WriteAsync("write -P 0x31 0 2M", $"write -P 0x32 {Size - 1536} 1536");
        foreach (var time in new[] { 1700000000, 1700000100 })
        {
            await VzdumpVm.BackUpAsync(Socket, storage, 100, Device, disk, time);
            await disk.WriteAsync("write -P 0x42 4M 1M");
        }
        return (storage, Path.Combine(storage.Root, "100", "qemu-1700000100", Device + ".qcow2"));
    }

    private static string Export(LineClient client, StorageBuilder storage)
    {
        client.Call("restore_vm_init", Json.Params(storage, ("volname", Top)));
        return client.Call("restore_vm_volume_init", Json.Params(storage, ("volname", Top), ("device", Device), ("info", new JsonObject())))!["qemu-img-path"]!.GetValue<string>();
    }

    /// <summary>The filesystem type of the mount at <paramref name="path"/>, or null.</summary>
    private static string? MountType(string path) => File.ReadAllLines("/proc/self/mountinfo").Select(l => l.Split(' '))
        .Where(f => f[4] == path).Select(f => f[Array.IndexOf(f, "-") + 1]).LastOrDefault();

    [Theory]
    [InlineData("xfs")]
    [InlineData("btrfs")]
    public async Task Where_the_filesystem_shares_blocks_the_export_is_a_read_only_file_of_the_layers_own_blocks(string filesystem)
    {
        await using var daemon = await DaemonProcess.StartAsync(Socket);
        var (storage, topImage) = await ChainOnAsync(filesystem);
        var before = storage.Snapshot();
        using var client = LineClient.Connect(Socket);

        var path = Export(client, storage);

        Assert.Equal(filesystem, MountType(path));
        Assert.StartsWith(ExportDir + "/", path, StringComparison.Ordinal);
        Assert.Equal([(0L, 2L << 20), (4L << 20, 1L << 20), (8L << 20, 1536L)], await SourceDisk.DataRangesAsync(path));
        await SourceDisk.Run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", path, topImage);
        var copy = Dir.Combine("restored.raw");
        await SourceDisk.Run("qemu-img", "convert", "-p", "-f", "raw", path, "-O", "raw", copy);
        await SourceDisk.Run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", copy, topImage);
        Assert.Equal(Size, new FileInfo(path).Length);
        Assert.ThrowsAny<IOException>(() => File.Open(path, FileMode.Open, FileAccess.ReadWrite).Dispose());
        Assert.Equal(before, storage.Snapshot());

        client.Call("restore_vm_volume_cleanup", Json.Params(storage, ("volname", Top), ("device", Device), ("info", new JsonObject())));
        client.Call("restore_vm_cleanup", Json.Params(storage, ("volname", Top)));
        Assert.Null(MountType(path));
        Assert.False(File.Exists(path));
        Assert.Equal(before, storage.Snapshot());
    }

    [Fact]
    public async Task An_export_of_shared_blocks_left_by_a_crashed_daemon_goes_when_the_daemon_starts_again()
    {
        var daemon = await DaemonProcess.StartAsync(Socket);
        var (storage, topImage) = await ChainOnAsync("xfs");
        var before = storage.Snapshot();
        string path;
        using (var client = LineClient.Connect(Socket))
        {
            path = Export(client, storage);
        }
        await daemon.CrashAsync();
        await daemon.DisposeAsync();
        Assert.Equal("xfs", MountType(path));

        await using var restarted = await DaemonProcess.StartAsync(Socket);

        Assert.Null(MountType(path));
        Assert.False(File.Exists(path));
        Assert.Equal(before, storage.Snapshot());
        using var again = LineClient.Connect(Socket);
        path = Export(again, storage);
        await SourceDisk.Run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", path, topImage);
    }
}
