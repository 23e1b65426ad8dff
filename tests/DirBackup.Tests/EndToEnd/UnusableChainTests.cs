using System.Globalization;
using DirBackup.Backup;
using DirBackup.Qemu;
using DirBackup.Store;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.EndToEnd;

/// <summary>
/// A new backup rests on the whole chain below the backup QEMU's bitmap is relative to. When that chain cannot carry
/// one more layer, the backup is full and its task log says why, instead of failing that night and every night after.
/// </summary>
[Collection(PathSocketCollection.Name)]
[Trait("speed", "slow")]
public sealed class UnusableChainTests(PathSocketDaemon daemon)
{
    private const string Device = "drive-scsi0";
    private const long Size = 8L << 20;
    private const int Layers = 230;

    /// <summary>
    /// A guest backed up daily under PVE's default retention (keep all) layers every backup on the one before. QEMU opens
    /// such a chain by the backing names in its headers, each relative to the image above it, and the path it builds
    /// grows by one "../qemu-&lt;epoch&gt;/" per layer: a little over 200 layers pass PATH_MAX.
    /// </summary>
    [Fact]
    public async Task A_backup_on_top_of_a_chain_of_the_most_backups_is_full_starts_a_new_chain_and_equals_the_disk()
    {
        var storage = daemon.NewStorage("longchain");
        string? parent = null;
        long time = 1700000000;
        for (int i = 0; i < Layers; i++, time += 86400)
        {
            await storage.AddVmWithImageAsync(100, time, parent, Size, []);
            parent = time.ToString(CultureInfo.InvariantCulture);
        }
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
}
