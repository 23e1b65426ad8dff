using System.Globalization;
using DirBackup.Backup;
using DirBackup.Qemu;
using DirBackup.Restore;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.EndToEnd;

/// <summary>
/// Chains at their limits. The longest chain the daemon builds restores and merges. A new backup rests on the whole
/// chain below the backup QEMU's bitmap is relative to; when that chain cannot carry one more layer (too long, or
/// damaged), the backup is full and its task log says why, instead of failing that night and every night after.
/// </summary>
[Collection(PathSocketCollection.Name)]
[Trait("speed", "slow")]
public sealed class ChainLimitsTests(PathSocketDaemon daemon)
{
    private const string Device = "drive-scsi0";
    private const long Size = 8L << 20;
    private const int Layers = 230;

    /// <summary>A chain of <paramref name="length"/> backups of guest 100, an hour apart, each on the one before; their volume names, oldest first.</summary>
    private static async Task<List<VolumeName>> ChainAsync(StorageBuilder storage, int length, Func<int, string[]> writes)
    {
        var volumes = new List<VolumeName>();
        string? parent = null;
        for (long i = 0, time = 1700000000; i < length; i++, time += 3600)
        {
            await storage.AddVmWithImageAsync(100, time, parent, Size, [], writes((int)i));
            parent = time.ToString(CultureInfo.InvariantCulture);
            volumes.Add(new VolumeName(100, GuestType.Qemu, time));
        }
        return volumes;
    }

    /// <summary>
    /// A guest backed up daily under PVE's default retention (keep all) layers every backup on the one before. QEMU opens
    /// such a chain by the backing names in its headers, each relative to the image above it, and the path it builds
    /// grows by one "../qemu-&lt;epoch&gt;/" per layer: a little over 200 layers pass PATH_MAX.
    /// </summary>
    [Fact]
    public async Task A_backup_on_top_of_a_chain_of_the_most_backups_is_full_starts_a_new_chain_and_equals_the_disk()
    {
        var storage = daemon.NewStorage("longchain");
        var chain = await ChainAsync(storage, Layers, _ => []);
        string parent = chain[^1].BackupTime.ToString(CultureInfo.InvariantCulture);
        long time = chain[^1].BackupTime + 86400;
        var store = new BackupStore(new StorageConfig(storage.StoreId, storage.Root), new StoreSettings());
        var record = new IncrementalRecord();
        record.Devices[Device] = new IncrementalDevice { Backup = $"qemu-{parent}", Size = Size };
        record.Write(store, 100);
        var disk = await SourceDisk.CreateAsync(storage.Root + "-vm", Size, "snapshot-access:longchain");
        await disk.WriteAsync("write -P 0x5a 1M 2M");

        await using var access = await disk.OpenBackupAccessAsync(Device);
        var run = await VzdumpVm.RunAsync(daemon.SocketPath, storage, 100, Device, Size, access.SocketPath, disk.Bitmap, time);

        Assert.True(run.ExitCode == 0, $"{run.Output.ToJsonString()}\n{run.Log}");
        Assert.Contains($"{Device}: full backup of 8.0 MiB (bitmap-mode new): qemu-{parent} ends a chain of {Layers} backups, and a chain holds at most {IncrementalRecord.MaxChainLength}; this full backup starts a new one", run.Log, StringComparison.Ordinal);
        var image = Path.Combine(storage.Root, "100", $"qemu-{time}", Device + ".qcow2");
        Assert.Null((await QemuImgInfo.ReadAsync(image)).BackingFile);
        Assert.Null(store.ReadManifest(new VolumeName(100, GuestType.Qemu, time)).Devices.Single().Parent);
        await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "qcow2", access.FrozenState, image], CancellationToken.None);
    }

    [Fact]
    public async Task A_backup_whose_chain_lost_a_layer_is_full_says_why_and_equals_the_disk()
    {
        var storage = daemon.NewStorage("lostlayer");
        var disk = await SourceDisk.CreateAsync(storage.Root + "-vm", Size, "snapshot-access:lostlayer");
        await disk.WriteAsync("write -P 0x11 0 2M");
        long[] times = [1700000000, 1700086400, 1700172800];
        foreach (var t in times)
        {
            await VzdumpVm.BackUpAsync(daemon.SocketPath, storage, 100, Device, disk, t);
            await disk.WriteAsync($"write -P 0x{t % 200 + 20:x} {t % 7}M 512K");
        }
        var lost = Path.Combine(storage.Root, "100", "qemu-1700086400", Device + ".qcow2");
        File.Delete(lost);

        await using var access = await disk.OpenBackupAccessAsync(Device);
        var run = await VzdumpVm.RunAsync(daemon.SocketPath, storage, 100, Device, Size, access.SocketPath, disk.Bitmap, 1700259200);

        Assert.True(run.ExitCode == 0, $"{run.Output.ToJsonString()}\n{run.Log}");
        Assert.Contains($"{Device}: full backup of 8.0 MiB (bitmap-mode new): the chain below qemu-1700172800 cannot carry another backup: backup/100/qemu-1700086400: image '{lost}' is missing", run.Log, StringComparison.Ordinal);
        var image = Path.Combine(storage.Root, "100", "qemu-1700259200", Device + ".qcow2");
        Assert.Null((await QemuImgInfo.ReadAsync(image)).BackingFile);
        await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "qcow2", "-F", "qcow2", access.FrozenState, image], CancellationToken.None);
    }

    /// <summary>
    /// The longest chain the daemon builds: its last backup is a real incremental on 127 layers, through a target that
    /// opens them by their headers' names. It restores as qemu-server restores it, and a backup in its middle merges
    /// away. Both name every layer in one nested JSON image name, one level per layer; .NET's serializer stopped at 64.
    /// </summary>
    [Fact]
    public async Task The_longest_chain_takes_its_last_incremental_restores_byte_for_byte_and_merges_a_backup_in_its_middle()
    {
        var storage = daemon.NewStorage("deepchain");
        // Each layer writes a cluster of its own, the later ones again over what lies below.
        var volumes = await ChainAsync(storage, IncrementalRecord.MaxChainLength - 1, i => [$"write -P {i % 250 + 1} {i % 100 * 65536} 64k"]);
        var store = new BackupStore(new StorageConfig(storage.StoreId, storage.Root), new StoreSettings());
        var record = new IncrementalRecord();
        record.Devices[Device] = new IncrementalDevice { Backup = volumes[^1].BackupDirName, Size = Size };
        record.Write(store, 100);
        var disk = await SourceDisk.CreateAsync(storage.Root + "-vm", Size, "snapshot-access:deepchain");
        await disk.WriteAsync("write -P 0xee 6M 128K");
        var last = new VolumeName(100, GuestType.Qemu, volumes[^1].BackupTime + 3600);
        await using (var access = await disk.OpenBackupAccessAsync(Device))
        {
            var run = await VzdumpVm.RunAsync(daemon.SocketPath, storage, 100, Device, Size, access.SocketPath, disk.Bitmap, last.BackupTime);
            Assert.True(run.ExitCode == 0, $"{run.Output.ToJsonString()}\n{run.Log}");
            Assert.Contains($"{Device}: incremental backup of 8.0 MiB on top of {volumes[^1].BackupDirName}", run.Log, StringComparison.Ordinal);
        }
        volumes.Add(last);
        Assert.Equal(IncrementalRecord.MaxChainLength, ChainBuilder.Build(store, last, Device).Count);
        var top = Path.Combine(storage.Root, "100", last.BackupDirName, Device + ".qcow2");
        var expected = Path.Combine(storage.Root + "-vm", "expected.raw");
        await ChildProcess.RunAsync("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", top, expected], CancellationToken.None);
        Assert.Equal(0xee, (await File.ReadAllBytesAsync(expected))[(6 << 20) + 4096]);

        var restore = await VzdumpVm.RestoreAsync(daemon.SocketPath, storage, last.ToString(), Path.Combine(storage.Root + "-vm", "restore"));

        Assert.True(restore.ExitCode == 0, restore.Output.ToJsonString() + restore.Log);
        var raw = restore.Output["restored"]![Device]!.GetValue<string>();
        Assert.Equal(await File.ReadAllBytesAsync(expected), await File.ReadAllBytesAsync(raw));

        await store.DeleteAsync(volumes[100], CancellationToken.None);

        Assert.Equal(IncrementalRecord.MaxChainLength - 1, store.ListBackups(100).Count);
        Assert.Equal(IncrementalRecord.MaxChainLength - 1, ChainBuilder.Build(store, last, Device).Count);
        await ChildProcess.RunAsync("qemu-img", ["compare", "-q", "-f", "raw", "-F", "qcow2", expected, top], CancellationToken.None);
    }
}
