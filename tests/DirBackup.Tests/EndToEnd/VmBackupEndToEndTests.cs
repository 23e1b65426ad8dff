using System.IO.Hashing;
using System.Text.Json.Nodes;
using DirBackup.Qemu;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.EndToEnd;

/// <summary>
/// Full, then two incrementals of a disk served the way PVE's backup access serves it, through the Perl shim in
/// vzdump's order against the real daemon; each backup's qcow2 chain must equal the disk at that moment, and an
/// incremental must read exactly the bytes the bitmap marked dirty.
/// </summary>
[Collection(PathSocketCollection.Name)]
[Trait("speed", "slow")]
public sealed class VmBackupEndToEndTests(PathSocketDaemon daemon)
{
    private const string Device = "drive-scsi0";
    private const long Size = 64L << 20;

    private static async Task AssertSameDiskAsync(string expected, string backupImage)
    {
        // qemu-img compare opens the backup with its backing chain, exactly as a restore would read it.
        await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "qcow2", expected, backupImage], CancellationToken.None);
    }

    /// <summary>
    /// The backup's digest file holds the XXH128 of every 64 KiB block of the disk as it was (the last block may be
    /// shorter), whether the block was copied, left zero, or kept from the parent with the parent's digest.
    /// </summary>
    private static async Task AssertDigestsOfDiskAsync(string expected, string backupDir, string device)
    {
        // Beside the disk's frozen state, not in the storage, which the daemon lists.
        var raw = Path.Combine(Path.GetDirectoryName(expected)!, $"digest-check-{device}.raw");
        await ChildProcess.RunAsync("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", expected, raw], CancellationToken.None);
        var disk = await File.ReadAllBytesAsync(raw);
        var digests = await File.ReadAllBytesAsync(Path.Combine(backupDir, device + ".digests"));
        const int Block = 64 << 10;
        Assert.Equal((disk.Length + Block - 1) / Block * 16, digests.Length);
        for (int block = 0; block * Block < disk.Length; block++)
        {
            var expectedDigest = XxHash128.Hash(disk.AsSpan(block * Block, Math.Min(Block, disk.Length - block * Block)));
            Assert.True(expectedDigest.AsSpan().SequenceEqual(digests.AsSpan(block * 16, 16)), $"{device}: digest of block {block} (at {block * (long)Block}) differs");
        }
        File.Delete(raw);
    }

    private static long BytesRead(BackupStore store, VolumeName volume) =>
        store.ReadManifest(volume).Devices.Single().Extra!["bytes-read"].GetInt64();

    [Fact]
    public async Task Full_then_incrementals_equal_the_disk_and_read_only_dirty_bytes()
    {
        var storage = daemon.NewStorage("e2e");
        var disk = await SourceDisk.CreateAsync(storage.Root + "-vm", Size, "snapshot-access:e2e");
        var store = new BackupStore(new StorageConfig("e2e", storage.Root), new StoreSettings());
        // Zeroes both ways: known to the image (-z) and written as data (-P 0), which only reading shows.
        await disk.WriteAsync("write -P 0xa1 0 8M", "write -z 8M 4M", "write -P 0xb2 40M 3M", "write -P 0 20M 2M");

        // 1: full (the first backup of a guest is always full).
        JsonObject first;
        var states = new List<string>();
        await using (var access = await disk.OpenBackupAccessAsync(Device))
        {
            states.Add(access.FrozenState);
            var run = await VzdumpVm.RunAsync(daemon.SocketPath, storage, 100, Device, Size, access.SocketPath, disk.Bitmap, 1700000000, notes: "first");
            Assert.True(run.ExitCode == 0, run.Log);
            first = run.Output;
            await AssertSameDiskAsync(access.FrozenState, Path.Combine(storage.Root, "100", "qemu-1700000000", Device + ".qcow2"));
            await AssertDigestsOfDiskAsync(access.FrozenState, Path.Combine(storage.Root, "100", "qemu-1700000000"), Device);
            // The full backup stores the 11 MiB of data and none of the zeroes.
            var map = JsonNode.Parse(await ChildProcess.RunAsync("qemu-img", ["map", "--output=json", "-f", "qcow2", Path.Combine(storage.Root, "100", "qemu-1700000000", Device + ".qcow2")], CancellationToken.None))!.AsArray();
            Assert.Equal(11L << 20, map.Where(e => e!["data"]!.GetValue<bool>()).Sum(e => e!["length"]!.GetValue<long>()));
        }
        // Everything copied was trimmed from the export, so PVE's fleecing image would not keep it.
        var blank = Path.Combine(storage.Root + "-vm", "blank.raw");
        await using (var f = File.Create(blank))
        {
            f.SetLength(Size);
        }
        await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "raw", Path.Combine(storage.Root + "-vm", "export-1.qcow2"), blank], CancellationToken.None);
        await disk.CommitBitmapAsync();
        Assert.Equal("new", first["incremental"]![Device]!.GetValue<string>());
        Assert.Equal("100/qemu-1700000000", first["archive"]!.GetValue<string>());
        Assert.Contains(first["log"]!.AsArray(), l => l!.GetValue<string>().StartsWith("info: transferred 64.0 MiB", StringComparison.Ordinal));
        Assert.Contains(first["log"]!.AsArray(), l => l!.GetValue<string>() == "info: backup is sparse: 53.0 MiB (82%) total zero data");
        Assert.Contains(first["log"]!.AsArray(), l => l!.GetValue<string>() == "info: drive-scsi0: full backup of 64.0 MiB (bitmap-mode new): no earlier backup of this disk on this storage");

        // 2: incremental after known writes: 1 MiB of data, 512 KiB of zeroes over data, 64 KiB at the end.
        await disk.WriteAsync("write -P 0xc3 16M 1M", "write -z 1M 512k", "write -P 0xd4 64448k 64k");
        await using (var access = await disk.OpenBackupAccessAsync(Device))
        {
            var run = await VzdumpVm.RunAsync(daemon.SocketPath, storage, 100, Device, Size, access.SocketPath, disk.Bitmap, 1700000100);
            Assert.True(run.ExitCode == 0, run.Log);
            Assert.Equal("use", run.Output["incremental"]![Device]!.GetValue<string>());
            states.Add(access.FrozenState);
            await AssertSameDiskAsync(access.FrozenState, Path.Combine(storage.Root, "100", "qemu-1700000100", Device + ".qcow2"));
            await AssertDigestsOfDiskAsync(access.FrozenState, Path.Combine(storage.Root, "100", "qemu-1700000100"), Device);
        }
        await disk.CommitBitmapAsync();
        Assert.Equal((1L << 20) + (512L << 10) + (64L << 10), BytesRead(store, VolumeName.Parse("backup/100/qemu-1700000100")));

        // 3: a second incremental on top of the first one.
        await disk.WriteAsync("write -P 0xe5 0 64k", "write -P 0xf6 33M 2M");
        await using (var access = await disk.OpenBackupAccessAsync(Device))
        {
            var run = await VzdumpVm.RunAsync(daemon.SocketPath, storage, 100, Device, Size, access.SocketPath, disk.Bitmap, 1700000200);
            Assert.True(run.ExitCode == 0, run.Log);
            states.Add(access.FrozenState);
            await AssertSameDiskAsync(access.FrozenState, Path.Combine(storage.Root, "100", "qemu-1700000200", Device + ".qcow2"));
            await AssertDigestsOfDiskAsync(access.FrozenState, Path.Combine(storage.Root, "100", "qemu-1700000200"), Device);
        }
        Assert.Equal((64L << 10) + (2L << 20), BytesRead(store, VolumeName.Parse("backup/100/qemu-1700000200")));

        // The chain is what the manifests and image headers say, and the listing shows all three.
        var third = store.ReadManifest(VolumeName.Parse("backup/100/qemu-1700000200"));
        Assert.Equal("qemu-1700000100", third.Devices.Single().Parent);
        var header = JsonNode.Parse(await ChildProcess.RunAsync("qemu-img", ["info", "--output=json", "-f", "qcow2", Path.Combine(storage.Root, "100", "qemu-1700000200", Device + ".qcow2")], CancellationToken.None))!;
        Assert.Equal("../qemu-1700000100/" + Device + ".qcow2", header["backing-filename"]!.GetValue<string>());
        Assert.Equal("qcow2", header["backing-filename-format"]!.GetValue<string>());
        using var client = daemon.Connect();
        var list = client.Call("list_volumes", Json.Params(storage, ("vmid", 100)))!.AsArray();
        Assert.Equal(["e2e:backup/100/qemu-1700000000", "e2e:backup/100/qemu-1700000100", "e2e:backup/100/qemu-1700000200"], list.Select(v => v!["volid"]!.GetValue<string>()));
        Assert.Equal("first", list[0]!["notes"]!.GetValue<string>());
        Assert.Equal("e2e:backup/100/qemu-1700000100", list[2]!["parent"]!.GetValue<string>());
        var config = Convert.FromBase64String(client.Call("archive_get_guest_config", Json.Params(storage, ("volname", "backup/100/qemu-1700000200")))!.GetValue<string>());
        Assert.Contains("#qmdump#map:scsi0:drive-scsi0:local:qcow2:", System.Text.Encoding.UTF8.GetString(config), StringComparison.Ordinal);

        // Restore every backup as qemu-server does, the middle one while a newer one exists, and compare byte for byte.
        var times = new[] { 1700000000, 1700000100, 1700000200 };
        foreach (var i in new[] { 1, 0, 2 })
        {
            var target = Path.Combine(storage.Root + "-vm", $"restore-{i}");
            var restore = await VzdumpVm.RestoreAsync(daemon.SocketPath, storage, $"backup/100/qemu-{times[i]}", target);
            Assert.True(restore.ExitCode == 0, restore.Output.ToJsonString() + restore.Log);
            var raw = restore.Output["restored"]![Device]!.GetValue<string>();
            await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "raw", "-F", "qcow2", raw, states[i]], CancellationToken.None);
        }
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(Path.GetDirectoryName(daemon.SocketPath)!, "qsd", "restore")));
    }

    /// <summary>
    /// Four runs of a vzdump job with keep-last=2: from the third on, the job's prune merges the oldest backup into
    /// the next one. The two kept backups must restore byte for byte as the disk was, and every run after a merge
    /// must still be incremental: QEMU's bitmap is relative to the newest backup, whose contents a merge never changes.
    /// </summary>
    [Fact]
    public async Task Retention_merges_the_oldest_backup_into_the_next_and_the_kept_ones_restore_byte_for_byte()
    {
        var storage = daemon.NewStorage("keep");
        var disk = await SourceDisk.CreateAsync(storage.Root + "-vm", Size, "snapshot-access:keep");
        var store = new BackupStore(new StorageConfig("keep", storage.Root), new StoreSettings());
        await disk.WriteAsync("write -P 0xa1 0 8M", "write -P 0xb2 40M 3M");
        string[] changes = ["write -P 0xc3 4M 1M", "write -z 40M 1M", "write -P 0xd4 63M 1M"];
        var states = new Dictionary<long, string>();
        for (int i = 0; i < 4; i++)
        {
            if (i > 0)
            {
                await disk.WriteAsync(changes[i - 1]);
            }
            long time = 1700000000 + (i * 100);
            await using (var access = await disk.OpenBackupAccessAsync(Device))
            {
                var run = await VzdumpVm.RunAsync(daemon.SocketPath, storage, 100, Device, Size, access.SocketPath, disk.Bitmap, time, keepLast: 2);
                Assert.True(run.ExitCode == 0, run.Log);
                Assert.Equal(i == 0 ? "new" : "use", run.Output["incremental"]![Device]!.GetValue<string>());
                var log = run.Output["log"]!.AsArray().Select(l => l!.GetValue<string>()).ToList();
                if (i >= 2)
                {
                    Assert.Contains($"info: merging 'keep:backup/100/qemu-{time - 200}' into 'keep:backup/100/qemu-{time - 100}' ({Device})", log);
                }
                states[time] = access.FrozenState;
            }
            await disk.CommitBitmapAsync();
        }

        using var client = daemon.Connect();
        var list = client.Call("list_volumes", Json.Params(storage, ("vmid", 100)))!.AsArray();
        Assert.Equal(["keep:backup/100/qemu-1700000200", "keep:backup/100/qemu-1700000300"], list.Select(v => v!["volid"]!.GetValue<string>()));
        Assert.Null(store.ReadManifest(VolumeName.Parse("backup/100/qemu-1700000200")).Devices.Single().Parent);
        Assert.Equal("qemu-1700000200", store.ReadManifest(VolumeName.Parse("backup/100/qemu-1700000300")).Devices.Single().Parent);
        Assert.Equal(1L << 20, BytesRead(store, VolumeName.Parse("backup/100/qemu-1700000300")));
        foreach (var time in new long[] { 1700000200, 1700000300 })
        {
            var restore = await VzdumpVm.RestoreAsync(daemon.SocketPath, storage, $"backup/100/qemu-{time}", Path.Combine(storage.Root + "-vm", $"restore-{time}"));
            Assert.True(restore.ExitCode == 0, restore.Output.ToJsonString() + restore.Log);
            var raw = restore.Output["restored"]![Device]!.GetValue<string>();
            await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "raw", "-F", "qcow2", raw, states[time]], CancellationToken.None);
            await AssertDigestsOfDiskAsync(states[time], Path.Combine(storage.Root, "100", $"qemu-{time}"), Device);
        }
    }

    /// <summary>
    /// A UEFI VM: a data disk and an EFI vars disk of 528 KiB (PVE's size for 4 MiB OVMF images), which ends in a
    /// partial 64 KiB block. One NBD server exports both, as QEMU does; each backup must equal both disks, the
    /// incremental read only what changed in each, and the restore give both back byte for byte.
    /// </summary>
    [Fact]
    public async Task Two_disks_one_of_an_odd_size_back_up_and_restore_byte_for_byte()
    {
        const string Efi = "drive-efidisk0";
        const long EfiSize = 540672;
        var storage = daemon.NewStorage("multi");
        var data = await SourceDisk.CreateAsync(storage.Root + "-vm0", Size, "snapshot-access:multi");
        var efi = await SourceDisk.CreateAsync(storage.Root + "-vm1", EfiSize, "snapshot-access:multi");
        var store = new BackupStore(new StorageConfig("multi", storage.Root), new StoreSettings());
        (string, long)[] devices = [(Device, Size), (Efi, EfiSize)];
        await data.WriteAsync("write -P 0xa1 0 4M", "write -P 0xb2 40M 3M");
        await efi.WriteAsync($"write -P 0x11 0 {EfiSize}");

        var states = new List<Dictionary<string, string>>();
        async Task BackUpAsync(long time)
        {
            await using var access = await SourceDisk.OpenBackupAccessAsync([(data, Device), (efi, Efi)]);
            var run = await VzdumpVm.RunAsync(daemon.SocketPath, storage, 100, devices, access.SocketPath, data.Bitmap, time);
            Assert.True(run.ExitCode == 0, run.Log);
            states.Add(new() { [Device] = access.FrozenStateOf(Device), [Efi] = access.FrozenStateOf(Efi) });
            foreach (var (device, _) in devices)
            {
                await AssertSameDiskAsync(access.FrozenStateOf(device), Path.Combine(storage.Root, "100", $"qemu-{time}", device + ".qcow2"));
                await AssertDigestsOfDiskAsync(access.FrozenStateOf(device), Path.Combine(storage.Root, "100", $"qemu-{time}"), device);
            }
            await data.CommitBitmapAsync();
            await efi.CommitBitmapAsync();
        }

        await BackUpAsync(1700000000);
        // Changes in both: the EFI disk's only in its last, partial block (16 KiB from 512 KiB on).
        await data.WriteAsync("write -P 0xc3 16M 1M");
        await efi.WriteAsync("write -P 0x22 524288 16384");
        await BackUpAsync(1700000100);

        var incremental = store.ReadManifest(VolumeName.Parse("backup/100/qemu-1700000100"));
        Assert.All(incremental.Devices, d => Assert.Equal("qemu-1700000000", d.Parent));
        Assert.Equal(1L << 20, incremental.Devices.Single(d => d.Name == Device).Extra!["bytes-read"].GetInt64());
        Assert.Equal(16384, incremental.Devices.Single(d => d.Name == Efi).Extra!["bytes-read"].GetInt64());

        for (int i = 0; i < 2; i++)
        {
            var target = Path.Combine(storage.Root + "-vm0", $"restore-{i}");
            var restore = await VzdumpVm.RestoreAsync(daemon.SocketPath, storage, $"backup/100/qemu-{(i == 0 ? 1700000000 : 1700000100)}", target);
            Assert.True(restore.ExitCode == 0, restore.Output.ToJsonString() + restore.Log);
            foreach (var (device, size) in devices)
            {
                var raw = restore.Output["restored"]![device]!.GetValue<string>();
                Assert.Equal(size, new FileInfo(raw).Length);
                await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "raw", "-F", "qcow2", raw, states[i][device]], CancellationToken.None);
            }
        }
    }
}
