using DirBackup.Errors;
using DirBackup.Store;
using Xunit;

namespace DirBackup.Tests.Unit;

public class VolumeNameTests
{
    [Theory]
    [InlineData("backup/100/qemu-1700000000", 100, GuestType.Qemu, 1700000000)]
    [InlineData("backup/999999999/lxc-0", 999999999, GuestType.Lxc, 0)]
    public void Parses_the_names_backup_init_produces(string text, int vmid, GuestType type, long time)
    {
        var name = VolumeName.Parse(text);
        Assert.Equal(new VolumeName(vmid, type, time), name);
        Assert.Equal(text, name.ToString());
        Assert.Equal(text["backup/".Length..], name.ArchiveName);
    }

    [Theory]
    [InlineData("backup/../etc", "guest id")]
    [InlineData("backup/100/../../etc/shadow", "expected backup/")]
    [InlineData("backup/100/qemu-1700000000/..", "expected backup/")]
    [InlineData("/backup/100/qemu-1700000000", "expected backup/")]
    [InlineData("/etc/passwd", "expected backup/")]
    [InlineData("backup/100/vzdump-1700000000", "unknown backup type")]
    [InlineData("backup/100/openvz-1700000000", "unknown backup type")]
    [InlineData("backup/abc/qemu-1700000000", "not a guest id")]
    [InlineData("backup/-100/qemu-1700000000", "not a guest id")]
    [InlineData("backup/0100/qemu-1700000000", "not a guest id")]
    [InlineData("backup/99/qemu-1700000000", "not a guest id")]
    [InlineData("backup/100/qemu-17e9", "not a Unix time")]
    [InlineData("backup/100/qemu-", "not a Unix time")]
    [InlineData("backup/100/qemu-1700000000\n", "control characters")]
    [InlineData("backup/100/qemu-17\u00000", "control characters")]
    [InlineData("", "empty")]
    [InlineData("images/100/vm-100-disk-0.qcow2", "expected backup/")]
    public void Refuses_names_that_are_not_backups_with_one_line(string text, string expected)
    {
        var e = Assert.Throws<DirBackupException>(() => VolumeName.Parse(text));
        Assert.Equal(ErrorCode.InvalidVolumeName, e.Code);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Refuses_over_long_names()
    {
        var e = Assert.Throws<DirBackupException>(() => VolumeName.Parse("backup/100/qemu-1" + new string('0', 200)));
        Assert.Contains("longer than 128", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("qemu-1700000000", true)]
    [InlineData("lxc-1", true)]
    [InlineData(".staging-qemu-1700000000", false)]
    [InlineData("qemu-1700000000.tmp", false)]
    [InlineData("lost+found", false)]
    public void Recognises_only_backup_directories(string dir, bool isBackup)
    {
        Assert.Equal(isBackup, VolumeName.FromDirectory(100, dir) is not null);
    }
}
